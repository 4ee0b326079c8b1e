/*
 * forkhost.h - the public C API of libforkhost.
 *
 * Native secondaries (a .so or PIE entry started with forkhost-run) include
 * this and link with `forkhost config --cflags --libs`.  The library is
 * already loaded in every secondary (the primary loaded it before forking
 * the template), so the entry's DT_NEEDED on libforkhost.so resolves to
 * that same copy, with the same arena.
 */
#ifndef FORKHOST_H
#define FORKHOST_H

#include "forkhost/version.h"
#include "forkhost/arena.h"
#include "forkhost/proto.h"
#include "forkhost/request.h"
#include "forkhost/spawn.h"
#include "forkhost/entry.h"
#include "forkhost/memzone.h"
#include "forkhost/ring.h"
#include "forkhost/mempool.h"
#include "forkhost/hash.h"
#include "forkhost/heap.h"
#include "forkhost/demo.h"
#include "forkhost/ipc.h"
#include "forkhost/hotset.h"
#include "forkhost/member.h"
#include "forkhost/log.h"
#include "forkhost/template.h"
#include "forkhost/thp.h"
#include "forkhost/rundir.h"
#include "forkhost/client.h"
#include "forkhost/init.h"

FH_API const char *fh_version(void);

/* Process helpers used by the primary. */
FH_API int fh_flush_stdio(void);       /* fflush(NULL) before a fork */

#endif /* FORKHOST_H */
