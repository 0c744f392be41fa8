/* nosync PROGRAM ARGS...: run PROGRAM with fsync, fdatasync, sync,
 * sync_file_range and syncfs returning 0 at once without doing anything
 * (a seccomp filter, SECCOMP_RET_ERRNO with errno 0, inherited by every
 * process PROGRAM runs). bench/compare.py runs geats through it with
 * NOSYNC=1, to measure what geats' rows would read if geats made nothing
 * durable before its reply (docs/performance.md). A measurement only:
 * never run geats this way. Root needs no PR_SET_NO_NEW_PRIVS. */
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NOP(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 0)

int main(int argc, char **argv) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        NOP(__NR_fsync), NOP(__NR_fdatasync), NOP(__NR_sync), NOP(__NR_sync_file_range), NOP(__NR_syncfs),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof(filter) / sizeof(filter[0]), .filter = filter };
    if (argc < 2) {
        fprintf(stderr, "usage: nosync PROGRAM [ARG...]\n");
        return 2;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("nosync: seccomp");
        return 1;
    }
    execv(argv[1], argv + 1);
    perror("nosync: exec");
    return 127;
}
