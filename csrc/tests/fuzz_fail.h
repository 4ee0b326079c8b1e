/*
 * fuzz_fail.h - how a fuzzer reports a broken invariant: one line on
 * stderr naming the fuzzer (FUZZ_NAME, defined before including this),
 * then abort(), which libFuzzer and the standalone driver (fuzz_driver.h)
 * both report as a crash with the input that caused it.
 */
#ifndef FORKHOST_FUZZ_FAIL_H
#define FORKHOST_FUZZ_FAIL_H

#include <stdio.h>
#include <stdlib.h>

#define FAIL(...) do {                                                    \
    fprintf(stderr, FUZZ_NAME ": invariant broken: " __VA_ARGS__);        \
    fputc('\n', stderr);                                                  \
    abort();                                                              \
} while (0)

#endif
