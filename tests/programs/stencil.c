/*
 * stencil.c - what a simulation looks like to a checkpointer: an OpenMP 2D Jacobi stencil
 * over two arrays of doubles, all threads rewriting every page of both every step (a step
 * sweeps a into b, then b back into a; the grid is a torus, so edges are written too).
 * Needs gcc -fopenmp (libgomp).
 *
 * The checksum weighs every cell by its row and column (diffusion alone keeps the plain
 * sum, so an old or misplaced page could go unseen in it). Each row is summed by the
 * thread that computed it, left to right, and the rows by one thread in order: the same
 * bits whatever the number of threads.
 *
 * Usage:  stencil [MiB of both arrays, default 512] [steps, default unlimited] [threads]
 *         (threads: default OpenMP's own choice, OMP_NUM_THREADS or one per core)
 * Output: "pid <pid>"
 *         "step <k> sum=<hex>"   per step; the bits of the checksum of the grid
 * Deterministic apart from the pid.
 */
#define _GNU_SOURCE
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static size_t n; /* the grid is n x n, in each array */

/* One Jacobi sweep from `from` into `to`; with `rows`, also each new row's weighted sum. */
static void sweep(const double *from, double *to, double *rows)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const double *up = from + (i + n - 1) % n * n, *row = from + i * n;
        const double *down = from + (i + 1) % n * n;
        double *out = to + i * n, sum = 0;
        for (size_t j = 0; j < n; j++) {
            size_t left = j ? j - 1 : n - 1, right = j + 1 < n ? j + 1 : 0;
            out[j] = 0.25 * (up[j] + down[j] + row[left] + row[right]);
            sum += out[j] * (double)(j + 1);
        }
        if (rows)
            rows[i] = sum * (double)(i + 1);
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 4) {
        fprintf(stderr, "usage: stencil [MiB] [steps] [threads]\n");
        return 2;
    }
    size_t mib = argc >= 2 ? strtoull(argv[1], NULL, 10) : 512;
    long steps = argc >= 3 ? strtol(argv[2], NULL, 10) : -1;
    if (argc == 4)
        omp_set_num_threads(atoi(argv[3]));
    while ((n + 1) * (n + 1) * 2 * sizeof(double) <= mib << 20)
        n++;

    printf("pid %d\n", getpid());
    double *a = malloc(n * n * sizeof(double)), *b = malloc(n * n * sizeof(double));
    double *rows = malloc(n * sizeof(double));
    if (n < 2 || a == NULL || b == NULL || rows == NULL) {
        fprintf(stderr, "stencil: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n * n; i++)
        a[i] = (double)(i * 2654435761u % 1000003) / 1000003; /* irregular, no two rows alike */

    for (long k = 1; steps < 0 || k <= steps; k++) {
        sweep(a, b, NULL);
        sweep(b, a, rows);
        double sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += rows[i];
        uint64_t bits;
        memcpy(&bits, &sum, sizeof(bits));
        printf("step %ld sum=%016llx\n", k, (unsigned long long)bits);
    }
    return 0;
}
