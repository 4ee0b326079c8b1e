/*
 * task.h - is a task (process or thread) that once held something in the
 * arena gone for good?  One answer for every owner check: ring waiters,
 * mempool caches, the heap's per-process slots.
 */
#ifndef FH_TASK_H
#define FH_TASK_H

#include <stdint.h>

/* 1 when tid no longer runs: no such task in our PID namespace, or a
 * zombie / dead task not yet reaped by its parent (it holds nothing and
 * will never touch the arena again).  0 while it runs, or stops. */
int fh__task_gone(int32_t tid);

#endif
