/* SPDX-License-Identifier: Apache-2.0
 * A minimal qemu TCG plugin: runs every guest load and store through one simulated cache level
 * (LRU, 64-byte lines, write-allocate) and prints at exit how many lines it had to fetch
 * ("misses: N"): the traffic a kernel sends past that level, which qemu cannot time. Options:
 * size=KiB (default 512, a Cortex-A76 L2) and ways=N (default 8). Like qemu_insn_count.c, the
 * few plugin API declarations it needs (QEMU 7.2) are written out here; built for the host by
 * tools/arm_attention_counts.sh. One guest thread: the bench it runs is single-threaded. */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb*));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb* tb);
struct qemu_plugin_insn* qemu_plugin_tb_get_insn(const struct qemu_plugin_tb* tb, size_t idx);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn* insn,
                                      void (*cb)(unsigned int, qemu_plugin_meminfo_t, uint64_t,
                                                 void*),
                                      enum qemu_plugin_cb_flags flags, enum qemu_plugin_mem_rw rw,
                                      void* userdata);
unsigned int qemu_plugin_mem_size_shift(qemu_plugin_meminfo_t info);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void*),
                                    void* userdata);
void qemu_plugin_outs(const char* string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

enum { kLineShift = 6 };
static uint64_t* tags;  /* [sets][ways]: line address + 1, 0 = empty */
static uint64_t* stamp; /* [sets][ways]: last use, for LRU */
static uint64_t sets, ways, clock_, misses;

static void touch(uint64_t line) {
    uint64_t* t = tags + (line % sets) * ways;
    uint64_t* s = stamp + (line % sets) * ways;
    uint64_t victim = 0;
    ++clock_;
    for (uint64_t w = 0; w < ways; ++w) {
        if (t[w] == line + 1) {
            s[w] = clock_;
            return;
        }
        if (s[w] < s[victim]) victim = w;
    }
    ++misses;
    t[victim] = line + 1;
    s[victim] = clock_;
}

static void on_access(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void* u) {
    (void)vcpu;
    (void)u;
    const uint64_t first = vaddr >> kLineShift;
    const uint64_t last = (vaddr + (1u << qemu_plugin_mem_size_shift(info)) - 1) >> kLineShift;
    for (uint64_t line = first; line <= last; ++line) touch(line);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
    (void)id;
    for (size_t i = 0, n = qemu_plugin_tb_n_insns(tb); i < n; ++i) {
        qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), on_access,
                                         QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, NULL);
    }
}

static void at_exit(qemu_plugin_id_t id, void* p) {
    (void)id;
    (void)p;
    char buf[64];
    snprintf(buf, sizeof buf, "misses: %" PRIu64 "\n", misses);
    qemu_plugin_outs(buf);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t* info, int argc,
                                                               char** argv) {
    (void)info;
    uint64_t kib = 512;
    ways = 8;
    for (int i = 0; i < argc; ++i) {
        if (strncmp(argv[i], "size=", 5) == 0) kib = strtoull(argv[i] + 5, NULL, 10);
        if (strncmp(argv[i], "ways=", 5) == 0) ways = strtoull(argv[i] + 5, NULL, 10);
    }
    sets = (kib << 10 >> kLineShift) / (ways ? ways : 1);
    if (ways == 0 || sets == 0) {
        fprintf(stderr, "qemu_cache_sim: size=%" PRIu64 " KiB with ways=%" PRIu64
                        " is no cache\n", kib, ways);
        return -1;
    }
    tags = calloc(sets * ways, sizeof *tags);
    stamp = calloc(sets * ways, sizeof *stamp);
    if (!tags || !stamp) return -1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
