/*
 * ipc_api.c - the public calls of forkhost/ipc.h that act for whichever
 * endpoint this process has: a C primary's (ipc_primary.c) once it called
 * fh_ipc_primary_prepare(), else a secondary's (ipc.c), which joins on the
 * first call that needs the primary.  Registering an action is the
 * registry's (ipc_registry.c) in either role, and joins in a secondary.
 */
#include "forkhost/ipc.h"
#include "ipc_internal.h"

#include <errno.h>
#include <stdbool.h>
#include <unistd.h>

FH_API int fh_ipc_register(const char *name, fh_ipc_action_t action)
{
    if (fh__ipc_check_name(name) < 0)
        return -1;
    if (!action || (is_reserved(name) && !fh__ipc_is_notice(name))) {
        errno = EINVAL;
        return -1;
    }
    /* Registered before joining: nothing the primary sends once we are a
     * member can miss it. */
    if (fh__ipc_action_add(name, action) < 0)
        return -1;
    /* While the member waits for a primary (fh_ipc_rejoining()), the
     * action is kept: it serves the primary it rejoins. */
    if (fh_ipc_socket_path()[0] && getpid() != fh_ipc_primary_pid()
        && fh__ipc_secondary_start() < 0 && !(errno == ENOTCONN && fh_ipc_rejoining())) {
        int e = errno;

        fh__ipc_action_remove(name);
        errno = e;
        return -1;
    }
    return 0;
}

FH_API int fh_ipc_unregister(const char *name)
{
    if (fh__ipc_check_name(name) < 0)
        return -1;
    return fh__ipc_action_remove(name);
}

FH_API int fh_ipc_start(void)
{
    return fh__ipc_secondary_start();
}

FH_API int fh_ipc_send(const struct fh_ipc_msg *msg)
{
    if (fh__ipc_primary_here())         /* a C primary: to every member */
        return fh__ipc_primary_send(msg, 0) < 0 ? -1 : 0;
    if (fh__ipc_check_msg(msg, true) < 0)
        return -1;
    return fh_ipc_send_raw(msg->name, msg->param, msg->len_param, msg->fds,
                           msg->num_fds);
}

FH_API int fh_ipc_request(const struct fh_ipc_msg *req, struct fh_ipc_reply *reply,
                          const struct timespec *ts)
{
    if (!reply || !req) {
        errno = EINVAL;
        return -1;
    }
    if (fh__ipc_primary_here())
        return fh__ipc_primary_request(req, 0, reply, ts);
    return fh__ipc_secondary_request(req, reply, ts);
}

FH_API int fh_ipc_request_async(const struct fh_ipc_msg *req,
                                const struct timespec *ts,
                                fh_ipc_async_t callback, void *arg)
{
    if (fh__ipc_primary_here())
        return fh__ipc_primary_request_async(req, 0, ts, callback, arg);
    return fh__ipc_secondary_request_async(req, ts, callback, arg);
}

FH_API int fh_ipc_reply(const struct fh_ipc_msg *msg, const void *peer)
{
    if (fh__ipc_primary_here())
        return fh__ipc_primary_reply(msg, peer);
    return fh__ipc_secondary_reply(msg, peer);
}

FH_API int fh_ipc_on_ipc_thread(void)
{
    return fh__ipc_secondary_thread() || fh__ipc_primary_thread();
}

/* Either endpoint's peer starts with struct fh__ipc_peer. */
FH_API uint64_t fh_ipc_peer_id(const void *peer)
{
    return peer ? ((const struct fh__ipc_peer *)peer)->id : 0;
}

FH_API void fh_ipc_stats(struct fh_ipc_stats *out)
{
    if (fh__ipc_primary_here())
        fh__ipc_primary_stats(out);
    else
        fh__ipc_secondary_stats(out);
}

/* -- addressing one peer ---------------------------------------------------- */

/* In a secondary: the primary is the only peer. */
static bool secondary_to_ok(pid_t to)
{
    if (to == 0 || to == fh_ipc_primary_pid()
        || (fh_ipc_peer_pid() && to == fh_ipc_peer_pid()))
        return true;
    errno = EINVAL;
    return false;
}

FH_API int fh_ipc_send_to(const struct fh_ipc_msg *msg, pid_t to)
{
    if (fh__ipc_primary_here())
        return fh__ipc_primary_send(msg, to);
    if (!secondary_to_ok(to) || fh_ipc_send(msg) < 0)
        return -1;
    return 1;
}

FH_API int fh_ipc_request_to(const struct fh_ipc_msg *req, pid_t to,
                             struct fh_ipc_reply *reply, const struct timespec *ts)
{
    if (!req || !reply) {
        errno = EINVAL;
        return -1;
    }
    if (fh__ipc_primary_here())
        return fh__ipc_primary_request(req, to, reply, ts);
    if (!secondary_to_ok(to))
        return -1;
    return fh__ipc_secondary_request(req, reply, ts);
}

FH_API int fh_ipc_request_async_to(const struct fh_ipc_msg *req, pid_t to,
                                   const struct timespec *ts,
                                   fh_ipc_async_t callback, void *arg)
{
    if (fh__ipc_primary_here())
        return fh__ipc_primary_request_async(req, to, ts, callback, arg);
    if (!secondary_to_ok(to))
        return -1;
    return fh__ipc_secondary_request_async(req, ts, callback, arg);
}
