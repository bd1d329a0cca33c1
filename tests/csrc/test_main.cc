// SPDX-License-Identifier: Apache-2.0
// Runs every registered native test. With an argument, runs only the tests whose name contains it.
#include <cstdio>
#include <cstring>

#include "check.h"

int main(int argc, char** argv) {
    const char* filter = argc > 1 ? argv[1] : nullptr;
    int ran = 0;
    for (const auto& t : qe_test::registry()) {
        if (filter && !std::strstr(t.name, filter)) continue;
        const int before = qe_test::failures();
        t.fn();
        std::printf("%s %s\n", qe_test::failures() == before ? "ok  " : "FAIL", t.name);
        ++ran;
    }
    std::printf("%d tests, %d failed checks\n", ran, qe_test::failures());
    return qe_test::failures() == 0 && ran > 0 ? 0 : 1;
}
