/*
 * avx.c - exercises: the extended register state (xstate) of a thread stopped in a syscall.
 * Build with -mavx2. Every tick loads a tick-dependent pattern into ymm8-ymm15 and, where
 * the CPU has AVX-512F, into zmm16-zmm31 and the mask registers k1-k7, then sleeps 40 ms with
 * a raw nanosleep syscall inside the SAME asm block and stores the registers back after the
 * syscall. Nearly all of the run is spent inside that syscall, so a checkpoint lands there
 * and the restore must bring back every vector register exactly. MXCSR is set to a
 * non-default value (round toward zero, flush-to-zero) at start and printed every tick.
 *
 * Usage:  avx <ticks>
 * Output: "pid <pid>"
 *         "tick <i> pid=<pid> ymm=<hash> ymm_ok=<0|1> zmm=<hash|none> zmm_ok=<0|1> mxcsr=<hex>"
 * zmm=none / zmm_ok=1 on CPUs without AVX-512F (deterministic per machine).
 * Exits 77 on a CPU without AVX2.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 40

static uint8_t ymm_in[8 * 32] __attribute__((aligned(64)));
static uint8_t ymm_out[8 * 32] __attribute__((aligned(64)));
static uint8_t zmm_in[16 * 64] __attribute__((aligned(64)));
static uint8_t zmm_out[16 * 64] __attribute__((aligned(64)));
static uint16_t k_in[8], k_out[8];

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 32);
    }
}

static uint64_t hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* Load ymm8-15, nanosleep(req) by raw syscall, store ymm8-15. Returns the syscall's rax. */
static long sleep_with_ymm(const struct timespec *req)
{
    long ret;
    __asm__ volatile("vmovdqu 0(%[in]), %%ymm8\n\t"
                     "vmovdqu 32(%[in]), %%ymm9\n\t"
                     "vmovdqu 64(%[in]), %%ymm10\n\t"
                     "vmovdqu 96(%[in]), %%ymm11\n\t"
                     "vmovdqu 128(%[in]), %%ymm12\n\t"
                     "vmovdqu 160(%[in]), %%ymm13\n\t"
                     "vmovdqu 192(%[in]), %%ymm14\n\t"
                     "vmovdqu 224(%[in]), %%ymm15\n\t"
                     "movl %[nr], %%eax\n\t"
                     "movq %[req], %%rdi\n\t"
                     "xorl %%esi, %%esi\n\t"
                     "syscall\n\t"
                     "vmovdqu %%ymm8, 0(%[out])\n\t"
                     "vmovdqu %%ymm9, 32(%[out])\n\t"
                     "vmovdqu %%ymm10, 64(%[out])\n\t"
                     "vmovdqu %%ymm11, 96(%[out])\n\t"
                     "vmovdqu %%ymm12, 128(%[out])\n\t"
                     "vmovdqu %%ymm13, 160(%[out])\n\t"
                     "vmovdqu %%ymm14, 192(%[out])\n\t"
                     "vmovdqu %%ymm15, 224(%[out])\n\t"
                     "vzeroupper\n\t"
                     : "=&a"(ret)
                     : [in] "r"(ymm_in), [out] "r"(ymm_out), [req] "r"(req), [nr] "i"(SYS_nanosleep)
                     : "rdi", "rsi", "rcx", "r11", "memory", "xmm8", "xmm9", "xmm10", "xmm11",
                       "xmm12", "xmm13", "xmm14", "xmm15");
    return ret;
}

#define ZLOAD(n, off) "vmovdqu64 " #off "(%[in]), %%zmm" #n "\n\t"
#define ZSTORE(n, off) "vmovdqu64 %%zmm" #n ", " #off "(%[out])\n\t"
#define KLOAD(n) "kmovw " #n "*2(%[kin]), %%k" #n "\n\t"
#define KSTORE(n) "kmovw %%k" #n ", " #n "*2(%[kout])\n\t"

/* The same with zmm16-31 and k1-k7. */
__attribute__((target("avx512f"))) static long sleep_with_zmm(const struct timespec *req)
{
    long ret;
    __asm__ volatile(ZLOAD(16, 0) ZLOAD(17, 64) ZLOAD(18, 128) ZLOAD(19, 192) ZLOAD(20, 256)
                     ZLOAD(21, 320) ZLOAD(22, 384) ZLOAD(23, 448) ZLOAD(24, 512) ZLOAD(25, 576)
                     ZLOAD(26, 640) ZLOAD(27, 704) ZLOAD(28, 768) ZLOAD(29, 832) ZLOAD(30, 896)
                     ZLOAD(31, 960)
                     KLOAD(1) KLOAD(2) KLOAD(3) KLOAD(4) KLOAD(5) KLOAD(6) KLOAD(7)
                     "movl %[nr], %%eax\n\t"
                     "movq %[req], %%rdi\n\t"
                     "xorl %%esi, %%esi\n\t"
                     "syscall\n\t"
                     ZSTORE(16, 0) ZSTORE(17, 64) ZSTORE(18, 128) ZSTORE(19, 192) ZSTORE(20, 256)
                     ZSTORE(21, 320) ZSTORE(22, 384) ZSTORE(23, 448) ZSTORE(24, 512) ZSTORE(25, 576)
                     ZSTORE(26, 640) ZSTORE(27, 704) ZSTORE(28, 768) ZSTORE(29, 832) ZSTORE(30, 896)
                     ZSTORE(31, 960)
                     KSTORE(1) KSTORE(2) KSTORE(3) KSTORE(4) KSTORE(5) KSTORE(6) KSTORE(7)
                     "vzeroupper\n\t"
                     : "=&a"(ret)
                     : [in] "r"(zmm_in), [out] "r"(zmm_out), [kin] "r"(k_in), [kout] "r"(k_out),
                       [req] "r"(req), [nr] "i"(SYS_nanosleep)
                     : "rdi", "rsi", "rcx", "r11", "memory", "xmm16", "xmm17", "xmm18", "xmm19",
                       "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27",
                       "xmm28", "xmm29", "xmm30", "xmm31", "k1", "k2", "k3", "k4", "k5", "k6",
                       "k7");
    return ret;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: avx <ticks>\n");
        return 2;
    }
    if (!__builtin_cpu_supports("avx2")) {
        fprintf(stderr, "avx: CPU has no AVX2\n");
        return 77;
    }
    int has512 = __builtin_cpu_supports("avx512f");
    long ticks = strtol(argv[1], NULL, 10);
    struct timespec req = {0, TICK_MS * 1000000L};

    _mm_setcsr((_mm_getcsr() & ~0x6000u) | 0x6000u | 0x8000u); /* RC = toward zero, FTZ */
    printf("pid %d\n", getpid());
    for (long t = 0; t < ticks; t++) {
        /* Both sleeps take the whole tick so a checkpoint is (almost) always inside one. */
        fill(ymm_in, sizeof ymm_in, (uint64_t)t);
        memset(ymm_out, 0, sizeof ymm_out);
        sleep_with_ymm(&req);
        int ymm_ok = memcmp(ymm_in, ymm_out, sizeof ymm_in) == 0;
        char zmm[32] = "none";
        int zmm_ok = 1;
        if (has512) {
            fill(zmm_in, sizeof zmm_in, (uint64_t)t + 1000);
            fill((uint8_t *)k_in, sizeof k_in, (uint64_t)t + 2000);
            memset(zmm_out, 0, sizeof zmm_out);
            memset(k_out, 0, sizeof k_out);
            sleep_with_zmm(&req);
            zmm_ok = memcmp(zmm_in, zmm_out, sizeof zmm_in) == 0 &&
                     memcmp(&k_in[1], &k_out[1], 7 * sizeof k_in[0]) == 0;
            snprintf(zmm, sizeof zmm, "%016llx",
                     (unsigned long long)(hash(zmm_out, sizeof zmm_out) ^
                                          hash((uint8_t *)&k_out[1], 7 * sizeof k_out[0])));
        }
        printf("tick %ld pid=%d ymm=%016llx ymm_ok=%d zmm=%s zmm_ok=%d mxcsr=%08x\n", t, getpid(),
               (unsigned long long)hash(ymm_out, sizeof ymm_out), ymm_ok, zmm, zmm_ok,
               _mm_getcsr() & ~0x3fu);
    }
    return 0;
}
