/* The team of threads (see wv_threads.h): one mutex guards the job; workers sleep on `work` until a
 * new job (a new generation) or the end, and the caller sleeps on `done` until no worker is busy. */
#include "wv_threads.h"

#include <stdlib.h>

#ifdef _WIN32
#if !defined(_WIN32_WINNT) || _WIN32_WINNT < 0x0600
#undef _WIN32_WINNT
#define _WIN32_WINNT 0x0600 /* Vista's SRW locks, condition variables and one-time initialization */
#endif
#include <windows.h>
#include <process.h>

typedef SRWLOCK wv_mutex;
typedef CONDITION_VARIABLE wv_cond;
typedef HANDLE wv_thread;
#define WV_THREAD_RETURN unsigned __stdcall

static void mutex_init(wv_mutex *m) { InitializeSRWLock(m); }
static void mutex_destroy(wv_mutex *m) { (void)m; }
static void mutex_lock(wv_mutex *m) { AcquireSRWLockExclusive(m); }
static void mutex_unlock(wv_mutex *m) { ReleaseSRWLockExclusive(m); }
static void cond_init(wv_cond *c) { InitializeConditionVariable(c); }
static void cond_destroy(wv_cond *c) { (void)c; }
static void cond_wait(wv_cond *c, wv_mutex *m) { SleepConditionVariableSRW(c, m, INFINITE, 0); }
static void cond_signal(wv_cond *c) { WakeConditionVariable(c); }
static void cond_broadcast(wv_cond *c) { WakeAllConditionVariable(c); }

static int thread_start(wv_thread *th, unsigned(__stdcall *fn)(void *), void *arg)
{
    *th = (HANDLE)_beginthreadex(NULL, 0, fn, arg, 0, NULL);
    return *th != 0;
}

static void thread_join(wv_thread th)
{
    WaitForSingleObject(th, INFINITE);
    CloseHandle(th);
}

static BOOL CALLBACK once_trampoline(PINIT_ONCE once, PVOID fn, PVOID *unused)
{
    (void)once, (void)unused;
    ((void (*)(void))fn)();
    return TRUE;
}

void wv_call_once(wv_once *flag, void (*fn)(void))
{
    InitOnceExecuteOnce((PINIT_ONCE)flag, once_trampoline, (PVOID)fn, NULL);
}

static unsigned fork_generation(void) { return 0; } /* no fork on Windows */
#else
typedef pthread_mutex_t wv_mutex;
typedef pthread_cond_t wv_cond;
typedef pthread_t wv_thread;
#define WV_THREAD_RETURN void *

static void mutex_init(wv_mutex *m) { pthread_mutex_init(m, NULL); }
static void mutex_destroy(wv_mutex *m) { pthread_mutex_destroy(m); }
static void mutex_lock(wv_mutex *m) { pthread_mutex_lock(m); }
static void mutex_unlock(wv_mutex *m) { pthread_mutex_unlock(m); }
static void cond_init(wv_cond *c) { pthread_cond_init(c, NULL); }
static void cond_destroy(wv_cond *c) { pthread_cond_destroy(c); }
static void cond_wait(wv_cond *c, wv_mutex *m) { pthread_cond_wait(c, m); }
static void cond_signal(wv_cond *c) { pthread_cond_signal(c); }
static void cond_broadcast(wv_cond *c) { pthread_cond_broadcast(c); }

static int thread_start(wv_thread *th, void *(*fn)(void *), void *arg) { return pthread_create(th, NULL, fn, arg) == 0; }

static void thread_join(wv_thread th) { pthread_join(th, NULL); }

void wv_call_once(wv_once *flag, void (*fn)(void)) { pthread_once(flag, fn); }

/* Forks this process went through since a team first started (each child counts its own): a team
 * started before a fork has no workers in the child, and its lock may be held by one of them. */
static unsigned g_forks;
static wv_once g_forks_watched = WV_ONCE_INIT;

static void count_fork(void) { g_forks++; }

static void watch_forks(void) { pthread_atfork(NULL, NULL, count_fork); }

static unsigned fork_generation(void)
{
    wv_call_once(&g_forks_watched, watch_forks);
    return g_forks;
}
#endif

struct wv_team {
    wv_mutex mu;
    wv_cond work;           /* a new generation, or stopping */
    wv_cond done;           /* busy fell to 0 */
    wv_item_fn fn;          /* the job: fn(job, i) for i < items */
    void *job;
    int64_t items, next;    /* next: the first item nobody took yet */
    int busy;               /* workers inside the current job */
    unsigned generation;    /* one more per job: a worker joins each job once */
    int stopping;
    unsigned forks;         /* fork_generation() when it started */
    int workers;            /* started */
    wv_thread thread[];     /* [workers] */
};

/* Whether the team's workers are in this process: not in a child forked since it started. */
static int lives_here(const wv_team *t) { return t->forks == fork_generation(); }

/* Runs items of the current job until none is left; the mutex is held on entry and on return. */
static void take_items(wv_team *t)
{
    while (t->next < t->items) {
        int64_t item = t->next++;
        wv_item_fn fn = t->fn;
        void *job = t->job;
        mutex_unlock(&t->mu);
        fn(job, item);
        mutex_lock(&t->mu);
    }
}

static WV_THREAD_RETURN worker_main(void *arg)
{
    wv_team *t = (wv_team *)arg;
    unsigned seen = 0; /* the generation this worker last joined */
    mutex_lock(&t->mu);
    for (;;) {
        while (!t->stopping && t->generation == seen) cond_wait(&t->work, &t->mu);
        if (t->stopping) break;
        seen = t->generation;
        t->busy++;
        take_items(t);
        if (--t->busy == 0) cond_signal(&t->done);
    }
    mutex_unlock(&t->mu);
    return 0;
}

wv_team *wv_team_start(int threads)
{
    wv_team *t;
    if (threads <= 1) return NULL;
    t = (wv_team *)calloc(1, sizeof(wv_team) + (size_t)(threads - 1) * sizeof(wv_thread));
    if (!t) return NULL;
    t->forks = fork_generation();
    mutex_init(&t->mu);
    cond_init(&t->work);
    cond_init(&t->done);
    while (t->workers < threads - 1 && thread_start(&t->thread[t->workers], worker_main, t)) t->workers++;
    if (t->workers == 0) { /* not one thread: the caller alone, as without a team */
        wv_team_stop(t);
        return NULL;
    }
    return t;
}

int wv_team_size(const wv_team *t) { return t && lives_here(t) ? t->workers + 1 : 1; }

void wv_team_run(wv_team *t, int64_t items, wv_item_fn fn, void *job)
{
    if (!t || items <= 1 || !lives_here(t)) {
        for (int64_t i = 0; i < items; i++) fn(job, i);
        return;
    }
    mutex_lock(&t->mu);
    t->fn = fn;
    t->job = job;
    t->items = items;
    t->next = 0;
    t->generation++;
    cond_broadcast(&t->work);
    take_items(t);
    while (t->busy > 0) cond_wait(&t->done, &t->mu);
    mutex_unlock(&t->mu);
}

void wv_team_stop(wv_team *t)
{
    if (!t) return;
    if (!lives_here(t)) return; /* forked: nothing here to join, and its lock may never be let go; its
                                   memory is all this process loses */
    mutex_lock(&t->mu);
    t->stopping = 1;
    cond_broadcast(&t->work);
    mutex_unlock(&t->mu);
    for (int i = 0; i < t->workers; i++) thread_join(t->thread[i]);
    cond_destroy(&t->done);
    cond_destroy(&t->work);
    mutex_destroy(&t->mu);
    free(t);
}
