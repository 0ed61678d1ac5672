/* A team of threads for the CPU backend's ops, on POSIX threads or Windows' own.
 *
 * A job is a count of independent items and a function run once per item. The calling thread and
 * the team's workers take items until none is left; wv_team_run returns when every item is done.
 * One job at a time, from one thread (the team belongs to one decode call). */
#ifndef WV_THREADS_H
#define WV_THREADS_H

#include <stdint.h>

typedef struct wv_team wv_team;

typedef void (*wv_item_fn)(void *job, int64_t item);

/* A team of `threads` threads, the caller counted among them. NULL where threads <= 1 or no worker
 * could start; a NULL team runs every item in the caller. */
wv_team *wv_team_start(int threads);

/* Threads the team runs a job on, the caller included (1 for NULL). */
int wv_team_size(const wv_team *t);

/* fn(job, i) for every i < items, spread over the team. */
void wv_team_run(wv_team *t, int64_t items, wv_item_fn fn, void *job);

/* Ends and joins the workers, frees the team. NULL is accepted. In a child forked since the team
 * started (POSIX), where its workers are not, it does nothing, and wv_team_run runs in the caller. */
void wv_team_stop(wv_team *t);

/* A flag for wv_call_once, statically initialized to WV_ONCE_INIT. */
#ifdef _WIN32
typedef union {
    void *ptr; /* Windows' INIT_ONCE, whose header this one does not include */
} wv_once;
#define WV_ONCE_INIT {0}
#else
#include <pthread.h>
typedef pthread_once_t wv_once;
#define WV_ONCE_INIT PTHREAD_ONCE_INIT
#endif

/* fn runs once per flag in the process, in whichever thread asks first; the others wait for it. */
void wv_call_once(wv_once *flag, void (*fn)(void));

#endif
