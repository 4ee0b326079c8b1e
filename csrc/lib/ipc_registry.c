/*
 * ipc_registry.c - what every IPC endpoint of this process looks up: the
 * actions registered by name (fh_ipc_register()), which a secondary's
 * receive thread (ipc.c) and a C primary's IPC thread (ipc_primary.c) run,
 * and where the primary's IPC socket is (fh_ipc_set_primary(), set before
 * the template fork and inherited by every secondary).
 *
 * After fork() the child's list is empty: its actions were the parent's.
 */
#include "forkhost/ipc.h"
#include "ipc_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

struct action {
    struct action  *next;
    fh_ipc_action_t fn;
    char            name[FH_IPC_NAME_MAX];
};

/* The list, under its lock; never held while an action runs. */
static pthread_mutex_t r_lock = PTHREAD_MUTEX_INITIALIZER;
static struct action *r_actions;
static pthread_once_t r_once = PTHREAD_ONCE_INIT;

/* Inherited from the primary through fork: written once by
 * fh_ipc_set_primary() before the template fork, only read afterwards. */
static char  r_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static pid_t r_primary_pid;

static void atfork_child(void)
{
    /* Only the forking thread exists in the child. */
    struct action *a = r_actions;

    pthread_mutex_init(&r_lock, NULL);
    r_actions = NULL;
    while (a) {
        struct action *next = a->next;

        free(a);
        a = next;
    }
}

static void init_once(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

int fh__ipc_action_add(const char *name, fh_ipc_action_t fn)
{
    struct action *a = calloc(1, sizeof *a);

    if (!a)
        return -1;
    strncpy(a->name, name, FH_IPC_NAME_MAX - 1);
    a->fn = fn;
    pthread_once(&r_once, init_once);
    pthread_mutex_lock(&r_lock);
    for (struct action *b = r_actions; b; b = b->next) {
        if (strcmp(b->name, a->name) == 0) {
            pthread_mutex_unlock(&r_lock);
            free(a);
            errno = EEXIST;
            return -1;
        }
    }
    a->next = r_actions;
    r_actions = a;
    pthread_mutex_unlock(&r_lock);
    return 0;
}

int fh__ipc_action_remove(const char *name)
{
    pthread_once(&r_once, init_once);
    pthread_mutex_lock(&r_lock);
    for (struct action **pp = &r_actions; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, name) == 0) {
            struct action *a = *pp;

            *pp = a->next;
            pthread_mutex_unlock(&r_lock);
            free(a);
            return 0;
        }
    }
    pthread_mutex_unlock(&r_lock);
    errno = ENOENT;
    return -1;
}

fh_ipc_action_t fh__ipc_action(const char *name)
{
    fh_ipc_action_t fn = NULL;

    pthread_mutex_lock(&r_lock);
    for (struct action *a = r_actions; a; a = a->next) {
        if (strcmp(a->name, name) == 0) {
            fn = a->fn;
            break;
        }
    }
    pthread_mutex_unlock(&r_lock);
    return fn;
}

FH_API int fh_ipc_set_primary(const char *path, pid_t primary_pid)
{
    if (!path || strlen(path) >= sizeof r_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(r_path, path);
    r_primary_pid = primary_pid;
    return 0;
}

FH_API const char *fh_ipc_socket_path(void) { return r_path; }
FH_API pid_t fh_ipc_primary_pid(void) { return r_primary_pid; }
