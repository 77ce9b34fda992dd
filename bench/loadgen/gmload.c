/* gmload: gearmill's benchmark load generator, on the real libgearman.
 *
 *   gmload [options] MODE      MODE: bg drain rt status big conns
 *
 * Every client and worker is a thread with its own libgearman object and connection.
 * Every job payload starts with its sequence number in 10 decimal digits, followed by
 * filler bytes derived from that number and a per-run nonce; workers tick every number
 * off, so a lost, duplicated or corrupted job makes the run fail. Background payloads
 * are regenerated and compared byte for byte by the worker; foreground results are
 * compared byte for byte by the client with what it sent. A monitor thread fails the run when nothing moves for --stall seconds
 * and when it runs longer than --timeout seconds.
 *
 * Output: one JSON object on stdout; exit status 0 only when the run was verified.
 * In conns mode with --hold, a line "# holding N" comes first, then the program waits
 * for stdin to close (the driver measures the server meanwhile).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgearman/gearman.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define HDR 10 /* decimal digits of the sequence number at the start of a payload */

static struct {
  const char *host;
  int port;
  const char *mode;
  long n;
  int clients;
  int workers;
  int batch;
  size_t size;
  double timeout;
  double stall;
  double cap; /* bg, rt, status: issue no new job after this many seconds (0: no cap) */
  int drain; /* bg: drain and verify after submitting (off for the memory scenario) */
  int hold;  /* conns: wait for stdin to close before the final check */
  long sockbuf; /* -1: let the kernel autotune; 0: keep libgearman's 32 KiB; >0: bytes */
} opt = {"127.0.0.1", 4730, NULL, 1000, 1, 1, 256, 16, 120.0, 10.0, 0.0, 1, 0, -1};

static char func[64];       /* the benchmark function, unique to this run */
static uint64_t nonce;      /* mixed into every payload's filler */
static unsigned char *sent; /* per sequence number: 1 once a client issued it */
static unsigned char *seen; /* per sequence number: how many times a worker got it */
static uint32_t *lat_us;    /* per sequence number: round trip as the client saw it */
static atomic_long progress, done_jobs, distinct, accepted, malformed, dups, target;
static atomic_int holding, capped;
static double t_start, t0;
static _Atomic double t_done; /* when the target-th distinct job reached a worker */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static int emitted;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* libgearman pins SO_SNDBUF/SO_RCVBUF of every socket to 32 KiB, which on loopback
 * leaves a large job waiting on delayed ACKs (about 1.5 MB/s whatever the server does).
 * This definition takes precedence over libc's for libgearman's calls: by default the
 * two options are not set at all, so the kernel autotunes the buffers as for any other
 * program; --sockbuf 0 keeps libgearman's value, --sockbuf BYTES sets that size. */
int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
  if (level == SOL_SOCKET && (name == SO_SNDBUF || name == SO_RCVBUF) && opt.sockbuf != 0) {
    if (opt.sockbuf < 0) return 0;
    int bytes = (int)opt.sockbuf;
    return (int)syscall(SYS_setsockopt, fd, level, name, &bytes, (socklen_t)sizeof bytes);
  }
  return (int)syscall(SYS_setsockopt, fd, level, name, value, len);
}

/* ---- result ---------------------------------------------------------------------- */

static struct {
  char error[512];
  double value, elapsed, p50, p99, pmax, drain_rate;
  const char *unit;
  long missing, unissued, open_at_end;
  int verifying; /* workers are checking jobs off: count what is missing at the end */
  int have_latency;
} res = {.unit = "jobs/s"};

static void count_missing(void);

static void fail(const char *fmt, ...) {
  pthread_mutex_lock(&out_lock);
  if (!res.error[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res.error, sizeof res.error, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&out_lock);
}

static void json_str(const char *key, const char *s) {
  printf(",\"%s\":\"", key);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') putchar('\\');
    if ((unsigned char)*s < 0x20) printf("\\u%04x", *s);
    else putchar(*s);
  }
  putchar('"');
}

/* Prints the one JSON object and ends the process (other threads may still be blocked
 * inside libgearman, so no clean-up runs). */
static void finish(void) {
  pthread_mutex_lock(&out_lock);
  if (emitted) {
    pthread_mutex_unlock(&out_lock);
    for (;;) pause();
  }
  emitted = 1;
  if (res.verifying) count_missing();
  long d = atomic_load(&dups), m = atomic_load(&malformed) + res.unissued;
  int ok = !res.error[0] && d == 0 && m == 0 && res.missing == 0;
  printf("{\"mode\":\"%s\",\"ok\":%s", opt.mode, ok ? "true" : "false");
  if (!ok) {
    char why[700], counts[128] = "";
    if (res.missing || d || m)
      snprintf(counts, sizeof counts, "%s%ld missing, %ld duplicated, %ld malformed",
               res.error[0] ? "; " : "", res.missing, d, m);
    snprintf(why, sizeof why, "%s%s", res.error, counts);
    json_str("error", why);
  }
  printf(",\"n\":%ld,\"clients\":%d,\"workers\":%d,\"size\":%zu", opt.n, opt.clients,
         opt.workers, opt.size);
  printf(",\"value\":%.3f,\"unit\":\"%s\",\"elapsed_s\":%.6f", res.value, res.unit, res.elapsed);
  printf(",\"accepted\":%ld,\"done\":%ld,\"missing\":%ld,\"duplicates\":%ld,\"malformed\":%ld",
         atomic_load(&accepted), atomic_load(&done_jobs), res.missing, d, m);
  if (res.have_latency)
    printf(",\"p50_us\":%.0f,\"p99_us\":%.0f,\"max_us\":%.0f", res.p50, res.p99, res.pmax);
  if (res.drain_rate > 0) printf(",\"drain_jobs_per_s\":%.1f", res.drain_rate);
  if (!strcmp(opt.mode, "conns")) printf(",\"open_at_end\":%ld", res.open_at_end);
  if (atomic_load(&capped)) printf(",\"capped_s\":%g", opt.cap);
  if (opt.sockbuf < 0) json_str("sockbuf", "kernel");
  else printf(",\"sockbuf\":%ld", opt.sockbuf ? opt.sockbuf : 32768L);
  json_str("function", func);
  printf(",\"wall_s\":%.3f}\n", now() - t_start);
  fflush(stdout);
  _exit(ok ? 0 : 1);
}

static void *monitor(void *arg) {
  (void)arg;
  long last = -1;
  double moved = now();
  for (;;) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    double t = now();
    long p = atomic_load(&progress);
    if (p != last || atomic_load(&holding)) {
      last = p;
      moved = t;
    }
    if (t - t_start > opt.timeout) {
      fail("time limit: still running after %g s (-t)", opt.timeout);
      finish();
    }
    if (t - moved > opt.stall) {
      fail("stalled: no job submitted or completed for %g s (--stall)", opt.stall);
      finish();
    }
  }
  return NULL;
}

/* ---- payloads -------------------------------------------------------------------- */

static void fill(unsigned char *p, size_t size, uint64_t seq) {
  char hdr[HDR + 1];
  snprintf(hdr, sizeof hdr, "%0*" PRIu64, HDR, seq);
  memcpy(p, hdr, HDR);
  uint64_t x = (nonce ^ (seq * 0x9E3779B97F4A7C15ULL)) | 1;
  for (size_t i = HDR; i < size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    size_t k = size - i < 8 ? size - i : 8;
    memcpy(p + i, &x, k);
  }
}

/* The sequence number of a payload of the right size with a valid number, or -1. */
static long check_header(const unsigned char *p, size_t size) {
  if (size != opt.size) return -1;
  uint64_t seq = 0;
  for (int i = 0; i < HDR; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    seq = seq * 10 + (uint64_t)(p[i] - '0');
  }
  return seq < (uint64_t)opt.n ? (long)seq : -1;
}

/* The sequence number of a payload equal byte for byte to the one we sent, or -1. */
static long check(const unsigned char *p, size_t size) {
  long seq = check_header(p, size);
  if (seq < 0) return -1;
  unsigned char small[256];
  unsigned char *want = size <= sizeof small ? small : malloc(size);
  if (!want) return -1;
  fill(want, size, (uint64_t)seq);
  int same = !memcmp(want, p, size);
  if (want != small) free(want);
  return same ? seq : -1;
}

/* Foreground payloads come back to the client, which compares every byte; the worker
 * only reads their number (a 64 MiB check would be timed as the server's). */
static void tick(const unsigned char *p, size_t size, int foreground) {
  long seq = foreground ? check_header(p, size) : check(p, size);
  if (seq < 0) {
    atomic_fetch_add(&malformed, 1);
  } else if (__atomic_fetch_add(&seen[seq], 1, __ATOMIC_RELAXED) != 0) {
    atomic_fetch_add(&dups, 1);
  } else if (atomic_fetch_add(&distinct, 1) + 1 == atomic_load(&target)) {
    atomic_store(&t_done, now());
  }
  atomic_fetch_add(&done_jobs, 1);
  atomic_fetch_add(&progress, 1);
}

/* ---- workers --------------------------------------------------------------------- */

typedef struct {
  int id;
  int echo;
  int register_at_start; /* 0: connect, then wait for the start barrier to register */
  pthread_t thread;
} worker_t;

static pthread_barrier_t worker_gate;

static gearman_return_t job_fn(gearman_job_st *job, void *ctx) {
  worker_t *w = ctx;
  const unsigned char *p = gearman_job_workload(job);
  size_t size = gearman_job_workload_size(job);
  tick(p, size, w->echo);
  if (!w->echo) return GEARMAN_SUCCESS; /* WORK_COMPLETE, no data */
  /* the echo goes out straight from the received buffer: no copy */
  gearman_return_t rc = gearman_job_send_complete(job, p, size);
  if (rc != GEARMAN_SUCCESS) fail("worker %d: WORK_COMPLETE failed: %s", w->id, gearman_strerror(rc));
  return rc;
}

static gearman_return_t ready_fn(gearman_job_st *job, void *ctx) {
  (void)job;
  (void)ctx;
  return GEARMAN_SUCCESS;
}

static gearman_worker_st *new_worker(const char *who) {
  gearman_worker_st *g = gearman_worker_create(NULL);
  if (!g || gearman_worker_add_server(g, opt.host, (in_port_t)opt.port) != GEARMAN_SUCCESS) {
    fail("%s: cannot set up a libgearman worker", who);
    finish();
  }
  return g;
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  char who[32], ready[96];
  snprintf(who, sizeof who, "worker %d", w->id);
  gearman_worker_st *g = new_worker(who);
  if (!w->register_at_start) {
    /* connected before the clock starts; registering is part of what is timed */
    if (gearman_worker_echo(g, "x", 1) != GEARMAN_SUCCESS) {
      fail("%s: cannot connect: %s", who, gearman_worker_error(g));
      finish();
    }
    pthread_barrier_wait(&worker_gate);
  }
  /* FUNC.ready.ID lets the driver know this worker's CAN_DO FUNC has been processed:
   * both go out together, before the first GRAB_JOB. */
  snprintf(ready, sizeof ready, "%s.ready.%d", func, w->id);
  if (gearman_worker_define_function(g, func, strlen(func), gearman_function_create(job_fn), 0,
                                     w) != GEARMAN_SUCCESS ||
      gearman_worker_define_function(g, ready, strlen(ready), gearman_function_create(ready_fn), 0,
                                     w) != GEARMAN_SUCCESS) {
    fail("%s: cannot register: %s", who, gearman_worker_error(g));
    finish();
  }
  for (;;) {
    gearman_return_t rc = gearman_worker_work(g);
    if (rc != GEARMAN_SUCCESS) {
      fail("%s: %s", who, gearman_worker_error(g));
      finish();
    }
  }
  return NULL;
}

static worker_t *start_workers(int count, int echo, int register_at_start) {
  worker_t *ws = calloc((size_t)count, sizeof *ws);
  for (int i = 0; i < count; i++) {
    ws[i] = (worker_t){.id = i, .echo = echo, .register_at_start = register_at_start};
    if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i])) {
      fail("cannot start worker thread %d", i);
      finish();
    }
  }
  return ws;
}

static gearman_client_st *new_client(const char *who) {
  gearman_client_st *c = gearman_client_create(NULL);
  if (!c || gearman_client_add_server(c, opt.host, (in_port_t)opt.port) != GEARMAN_SUCCESS) {
    fail("%s: cannot set up a libgearman client", who);
    finish();
  }
  return c;
}

/* One GET_STATUS round trip for an unknown handle: connects, and measures the floor. */
static int ping(gearman_client_st *c) {
  static const gearman_job_handle_t unknown = "H:gmload:0"; /* libgearman reads 64 bytes */
  bool known = true, running = true;
  uint32_t num = 0, den = 0;
  gearman_return_t rc = gearman_client_job_status(c, unknown, &known, &running, &num, &den);
  return rc == GEARMAN_SUCCESS && !known;
}

/* Waits until every worker has registered: one foreground job to each one's ready
 * function, which only that worker can do. */
static void await_workers(int count) {
  gearman_client_st *c = new_client("readiness client");
  for (int i = 0; i < count; i++) {
    char name[96];
    size_t size = 0;
    gearman_return_t rc;
    snprintf(name, sizeof name, "%s.ready.%d", func, i);
    void *r = gearman_client_do(c, name, NULL, "r", 1, &size, &rc);
    free(r);
    if (rc != GEARMAN_SUCCESS) {
      fail("worker %d never became ready: %s", i, gearman_client_error(c));
      finish();
    }
    atomic_fetch_add(&progress, 1);
  }
  gearman_client_free(c);
}

/* ---- clients --------------------------------------------------------------------- */

typedef struct {
  int id;
  long lo, hi; /* sequence numbers [lo, hi) */
  int batch;
  pthread_t thread;
  double end;
} client_t;

static pthread_barrier_t client_gate; /* clients + main: the clock starts when it opens */

/* --cap: a slow server gets a bounded run; what was issued is still verified */
static int over_cap(double start) {
  if (opt.cap <= 0 || now() - start < opt.cap) return 0;
  atomic_store(&capped, 1);
  return 1;
}

static gearman_client_st *ready_client(client_t *cl) {
  char who[32];
  snprintf(who, sizeof who, "client %d", cl->id);
  gearman_client_st *c = new_client(who);
  if (!ping(c)) {
    fail("%s: first GET_STATUS failed: %s", who, gearman_client_error(c));
    finish();
  }
  return c;
}

static void *bg_client(void *arg) {
  client_t *cl = arg;
  gearman_client_st *c = ready_client(cl);
  size_t b = (size_t)cl->batch;
  unsigned char *bufs = malloc(b * opt.size);
  char (*uniq)[24] = malloc(b * sizeof *uniq);
  gearman_task_st **tasks = malloc(b * sizeof *tasks);
  if (!bufs || !uniq || !tasks) {
    fail("client %d: out of memory", cl->id);
    finish();
  }
  pthread_barrier_wait(&client_gate);
  double start = now();
  for (long seq = cl->lo; seq < cl->hi && !over_cap(start);) {
    size_t k = 0;
    double t = now();
    for (; k < b && seq < cl->hi; k++, seq++) {
      unsigned char *p = bufs + k * opt.size;
      fill(p, opt.size, (uint64_t)seq);
      /* unique per job (the function name is already unique to this run), kept short so
       * the memory scenario measures the server, not our ids */
      snprintf(uniq[k], sizeof uniq[k], "%ld", seq);
      gearman_return_t rc;
      /* libgearman keeps pointers to the payload and unique until run_tasks returns */
      tasks[k] = gearman_client_add_task_background(c, NULL, NULL, func, uniq[k], p, opt.size,
                                                    &rc);
      if (!tasks[k] || rc != GEARMAN_SUCCESS) {
        fail("client %d: cannot queue a task: %s", cl->id, gearman_client_error(c));
        finish();
      }
      sent[seq] = 1;
    }
    gearman_return_t rc = gearman_client_run_tasks(c);
    if (rc != GEARMAN_SUCCESS) {
      fail("client %d: submitting a batch failed: %s", cl->id, gearman_client_error(c));
      finish();
    }
    for (size_t i = 0; i < k; i++) {
      const char *handle = gearman_task_job_handle(tasks[i]);
      if (gearman_task_return(tasks[i]) != GEARMAN_SUCCESS || !handle || !handle[0]) {
        fail("client %d: a background job got no JOB_CREATED handle (%s)", cl->id,
             gearman_strerror(gearman_task_return(tasks[i])));
        finish();
      }
      gearman_task_free(tasks[i]);
    }
    /* each job of the batch waited as long as the batch (-b 1: a lone submission) */
    uint32_t us = (uint32_t)((now() - t) * 1e6 + 0.5);
    for (size_t i = 0; i < k; i++) lat_us[seq - (long)k + (long)i] = us;
    atomic_fetch_add(&accepted, (long)k);
    atomic_fetch_add(&progress, (long)k);
  }
  cl->end = now();
  gearman_client_free(c);
  free(bufs);
  free(uniq);
  free(tasks);
  return NULL;
}

static void *rt_client(void *arg) {
  client_t *cl = arg;
  gearman_client_st *c = ready_client(cl);
  unsigned char *p = malloc(opt.size);
  if (!p) {
    fail("client %d: out of memory for a %zu-byte payload", cl->id, opt.size);
    finish();
  }
  pthread_barrier_wait(&client_gate);
  double start = now();
  for (long seq = cl->lo; seq < cl->hi && !over_cap(start); seq++) {
    fill(p, opt.size, (uint64_t)seq);
    sent[seq] = 1;
    size_t size = 0;
    gearman_return_t rc;
    /* a unique id of our own: without one libgearman makes a time-based UUID whose
     * per-thread state can give two threads the same id in the same microsecond, and a
     * server then rightly coalesces the two jobs (one client gets the other's result:
     * seen once in 22 runs of 20,000 jobs with 8 threads) */
    char unique[24];
    snprintf(unique, sizeof unique, "%ld", seq);
    double t = now();
    void *r = gearman_client_do(c, func, unique, p, opt.size, &size, &rc);
    double dt = now() - t;
    if (rc != GEARMAN_SUCCESS) {
      fail("client %d: job %ld failed: %s", cl->id, seq, gearman_client_error(c));
      finish();
    }
    if (size != opt.size || !r || memcmp(r, p, size)) {
      fail("client %d: job %ld came back different (%zu bytes for %zu sent)", cl->id, seq, size,
           opt.size);
      finish();
    }
    free(r);
    lat_us[seq] = (uint32_t)(dt * 1e6 + 0.5);
    atomic_fetch_add(&accepted, 1);
    atomic_fetch_add(&progress, 1);
  }
  cl->end = now();
  free(p);
  return NULL;
}

static void *status_client(void *arg) {
  client_t *cl = arg;
  gearman_client_st *c = ready_client(cl);
  pthread_barrier_wait(&client_gate);
  double start = now();
  for (long i = cl->lo; i < cl->hi && !over_cap(start); i++) {
    double t = now();
    if (!ping(c)) {
      fail("client %d: GET_STATUS %ld failed: %s", cl->id, i, gearman_client_error(c));
      finish();
    }
    lat_us[i] = (uint32_t)((now() - t) * 1e6 + 0.5);
    sent[i] = 1;
    atomic_fetch_add(&accepted, 1);
    atomic_fetch_add(&progress, 1);
  }
  cl->end = now();
  return NULL;
}

/* Runs opt.clients threads over sequence numbers [0, n); returns the time the last
 * one finished; the clock (t0) starts when all are connected. */
static double run_clients(void *(*body)(void *), long n, int batch) {
  int count = opt.clients;
  client_t *cs = calloc((size_t)count, sizeof *cs);
  pthread_barrier_init(&client_gate, NULL, (unsigned)count + 1);
  for (int i = 0; i < count; i++) {
    cs[i] = (client_t){.id = i, .lo = n * i / count, .hi = n * (i + 1) / count, .batch = batch};
    if (pthread_create(&cs[i].thread, NULL, body, &cs[i])) {
      fail("cannot start client thread %d", i);
      finish();
    }
  }
  pthread_barrier_wait(&client_gate);
  t0 = now();
  double end = t0;
  for (int i = 0; i < count; i++) {
    pthread_join(cs[i].thread, NULL);
    if (cs[i].end > end) end = cs[i].end;
  }
  pthread_barrier_destroy(&client_gate);
  free(cs);
  if (atomic_load(&accepted) == 0) {
    fail("the server accepted no job or request at all");
    finish();
  }
  return end;
}

/* ---- verification ---------------------------------------------------------------- */

/* Waits until workers have got every accepted job; a lost one shows as a stall (the
 * monitor then reports what is missing). */
static void await_done(int timed) {
  res.verifying = 1;
  /* timed: the target was set before any worker started, so the worker that reaches it
   * stores t_done; wait for that store too */
  while (atomic_load(&distinct) < atomic_load(&target) || (timed && atomic_load(&t_done) == 0)) {
    struct timespec ts = {0, 200 * 1000};
    nanosleep(&ts, NULL);
  }
}

static void count_missing(void) {
  res.missing = res.unissued = 0;
  for (long s = 0; s < opt.n; s++) {
    if (sent[s] && !seen[s]) res.missing++;
    if (!sent[s] && seen[s]) res.unissued++; /* a job nobody submitted */
  }
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* Percentiles over the sequence numbers that were issued (all of them unless capped). */
static void latencies(void) {
  long count = 0;
  for (long s = 0; s < opt.n; s++)
    if (sent[s]) lat_us[count++] = lat_us[s];
  if (count <= 0) return;
  qsort(lat_us, (size_t)count, sizeof *lat_us, cmp_u32);
  res.p50 = lat_us[(count - 1) / 2];
  res.p99 = lat_us[(long)((double)(count - 1) * 0.99)];
  res.pmax = lat_us[count - 1];
  res.have_latency = 1;
}

/* ---- modes ----------------------------------------------------------------------- */

static void mode_bg(void) {
  double end = run_clients(bg_client, opt.n, opt.batch);
  res.elapsed = end - t0;
  res.value = (double)atomic_load(&accepted) / res.elapsed;
  latencies(); /* to JOB_CREATED, per batch */
  if (!opt.drain) return; /* the memory scenario: jobs stay queued, nothing to verify */
  atomic_store(&target, atomic_load(&accepted));
  double d0 = now();
  start_workers(opt.workers, 0, 1);
  await_done(1);
  res.drain_rate = (double)atomic_load(&target) / (atomic_load(&t_done) - d0);
}

static void mode_drain(void) {
  int workers = opt.workers;
  run_clients(bg_client, opt.n, 1024); /* fill, untimed */
  atomic_store(&target, atomic_load(&accepted));
  pthread_barrier_init(&worker_gate, NULL, (unsigned)workers + 1);
  start_workers(workers, 0, 0);
  pthread_barrier_wait(&worker_gate);
  t0 = now();
  await_done(1);
  res.elapsed = atomic_load(&t_done) - t0;
  res.value = (double)atomic_load(&target) / res.elapsed;
}

static void mode_rt(void) {
  start_workers(opt.workers, 1, 1);
  await_workers(opt.workers);
  double end = run_clients(rt_client, opt.n, 1);
  res.elapsed = end - t0;
  res.value = (double)atomic_load(&accepted) / res.elapsed;
  latencies();
  atomic_store(&target, atomic_load(&accepted));
  await_done(0); /* a worker ticks before it answers, so this returns at once */
}

static void mode_status(void) {
  res.unit = "req/s";
  double end = run_clients(status_client, opt.n, 1);
  res.elapsed = end - t0;
  res.value = (double)atomic_load(&accepted) / res.elapsed;
  latencies();
}

static void mode_big(void) {
  res.unit = "MB/s";
  opt.n = 1;
  opt.clients = 1;
  opt.workers = 1;
  start_workers(1, 1, 1);
  await_workers(1);
  double end = run_clients(rt_client, 1, 1);
  res.elapsed = end - t0;
  res.value = (double)opt.size / res.elapsed / 1e6;
  atomic_store(&target, 1);
  await_done(0);
}

/* Client connections to our server's port that the kernel still sees established. */
static long established(void) {
  FILE *f = fopen("/proc/net/tcp", "r");
  if (!f) return -1;
  char line[512];
  long count = 0;
  if (!fgets(line, sizeof line, f)) line[0] = 0; /* header */
  while (fgets(line, sizeof line, f)) {
    unsigned lport, rport, state;
    if (sscanf(line, " %*d: %*x:%x %*x:%x %x", &lport, &rport, &state) == 3 &&
        rport == (unsigned)opt.port && state == 1)
      count++;
  }
  fclose(f);
  return count;
}

static void mode_conns(void) {
  res.unit = "conns";
  gearman_client_st **cs = calloc((size_t)opt.n, sizeof *cs);
  t0 = now();
  for (long i = 0; i < opt.n; i++) {
    char who[32];
    snprintf(who, sizeof who, "connection %ld", i);
    cs[i] = new_client(who);
    if (!ping(cs[i])) {
      fail("%s: GET_STATUS failed: %s", who, gearman_client_error(cs[i]));
      finish();
    }
    atomic_fetch_add(&accepted, 1);
    atomic_fetch_add(&progress, 1);
  }
  res.elapsed = now() - t0;
  res.value = (double)opt.n;
  if (opt.hold) {
    atomic_store(&holding, 1);
    printf("# holding %ld\n", opt.n);
    fflush(stdout);
    char buf[256];
    while (read(0, buf, sizeof buf) > 0) {
    }
    atomic_store(&holding, 0);
  }
  res.open_at_end = established();
  if (res.open_at_end < opt.n)
    fail("only %ld of %ld connections were still open at the end", res.open_at_end, opt.n);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: gmload [options] MODE\n"
          "modes:\n"
          "  bg      C clients submit N background jobs, B per pipelined batch (timed to the\n"
          "          last JOB_CREATED); then W workers drain and verify them (untimed)\n"
          "  drain   queue N background jobs (untimed), then time W connected workers\n"
          "          registering and draining them\n"
          "  rt      C clients each run foreground jobs through W echo workers (latency)\n"
          "  status  C clients run N GET_STATUS round trips (latency)\n"
          "  big     one foreground job of -s bytes through one echo worker\n"
          "  conns   open N idle client connections one after the other\n"
          "options:\n"
          "  --host H --port P   server (127.0.0.1:4730)\n"
          "  -n N                jobs, requests or connections (1000)\n"
          "  -c C                client threads (1)\n"
          "  -w W                worker threads (1)\n"
          "  -b B                background jobs per batch (256)\n"
          "  -s BYTES            payload size, at least %d (16)\n"
          "  --no-drain          bg: leave the jobs queued (memory scenario), no check\n"
          "  --hold              conns: print '# holding N', wait for stdin to close\n"
          "  -t SECONDS          hard time limit of the whole run (120)\n"
          "  --stall SECONDS     fail when nothing moves this long (10)\n"
          "  --cap SECONDS       bg, rt, status: issue no new job after this long (the\n"
          "                      rate is over what was done; every issued job is checked)\n"
          "  --sockbuf BYTES     SO_SNDBUF/SO_RCVBUF: -1 kernel autotuning (default),\n"
          "                      0 libgearman's 32 KiB, or a size\n",
          HDR);
}

static long parse_long(const char *flag, const char *s, long min) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < min) {
    fprintf(stderr, "gmload: %s %s: expected a whole number >= %ld\n", flag, s, min);
    exit(2);
  }
  return v;
}

static double parse_seconds(const char *flag, const char *s) {
  char *end;
  double v = strtod(s, &end);
  if (*end || !(v > 0)) {
    fprintf(stderr, "gmload: %s %s: expected a number of seconds > 0\n", flag, s);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  enum { O_HOST = 256, O_PORT, O_STALL, O_SOCKBUF, O_NODRAIN, O_HOLD, O_CAP };
  static const struct option longs[] = {
      {"host", required_argument, NULL, O_HOST},   {"port", required_argument, NULL, O_PORT},
      {"stall", required_argument, NULL, O_STALL}, {"sockbuf", required_argument, NULL, O_SOCKBUF},
      {"no-drain", no_argument, NULL, O_NODRAIN},  {"hold", no_argument, NULL, O_HOLD},
      {"cap", required_argument, NULL, O_CAP},     {"help", no_argument, NULL, 'h'},            {NULL, 0, NULL, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "n:c:w:b:s:t:h", longs, NULL)) != -1) {
    switch (ch) {
      case O_HOST: opt.host = optarg; break;
      case O_PORT: opt.port = (int)parse_long("--port", optarg, 1); break;
      case O_STALL: opt.stall = parse_seconds("--stall", optarg); break;
      case O_SOCKBUF: opt.sockbuf = parse_long("--sockbuf", optarg, -1); break;
      case O_CAP: opt.cap = parse_seconds("--cap", optarg); break;
      case O_NODRAIN: opt.drain = 0; break;
      case O_HOLD: opt.hold = 1; break;
      case 'n': opt.n = parse_long("-n", optarg, 1); break;
      case 'c': opt.clients = (int)parse_long("-c", optarg, 1); break;
      case 'w': opt.workers = (int)parse_long("-w", optarg, 1); break;
      case 'b': opt.batch = (int)parse_long("-b", optarg, 1); break;
      case 's': opt.size = (size_t)parse_long("-s", optarg, HDR); break;
      case 't': opt.timeout = parse_seconds("-t", optarg); break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "gmload: give exactly one MODE (bg, drain, rt, status, big, conns)\n");
    usage(stderr);
    return 2;
  }
  opt.mode = argv[optind];
  static const struct {
    const char *name;
    void (*run)(void);
  } modes[] = {{"bg", mode_bg},     {"drain", mode_drain}, {"rt", mode_rt},
               {"status", mode_status}, {"big", mode_big}, {"conns", mode_conns}};
  void (*run)(void) = NULL;
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
    if (!strcmp(modes[i].name, opt.mode)) run = modes[i].run;
  if (!run) {
    fprintf(stderr, "gmload: unknown mode %s (bg, drain, rt, status, big, conns)\n", opt.mode);
    return 2;
  }
  if (opt.clients > opt.n) opt.clients = (int)opt.n;

  /* many connections (conns, herds) need many descriptors */
  struct rlimit rl;
  if (!getrlimit(RLIMIT_NOFILE, &rl)) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  t_start = now();
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  nonce = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
  snprintf(func, sizeof func, "gmload.%08" PRIx32, (uint32_t)(nonce ^ (nonce >> 32)));
  long n = !strcmp(opt.mode, "big") ? 1 : opt.n;
  sent = calloc((size_t)n, 1);
  seen = calloc((size_t)n, 1);
  lat_us = calloc((size_t)n, sizeof *lat_us);
  atomic_store(&target, -1);
  if (!sent || !seen || !lat_us) {
    fail("out of memory for %ld sequence numbers", n);
    finish();
  }
  pthread_t mon;
  pthread_create(&mon, NULL, monitor, NULL);
  run();
  finish();
  return 0;
}
