#include "archive/service.h"

#include "archive/retention.h"
#include "core/log.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sightline::archive {
namespace {

constexpr std::size_t kBatch = 256;  // exchanges per group commit
constexpr auto kTick = std::chrono::milliseconds(200);  // sync and rotation checks when idle
// The lowest priority of SCHED_BATCH. On 2 shared cores (bench/RESULTS.md)
// the writer at nice 0 cost 43 % of W2 throughput, at nice 10 about 34 %,
// at nice 19 24-35 %: the event loops, and the origin and clients they wait
// for, keep the CPU while the writer catches up in the gaps, its queue
// bounded by back-pressure. It holds no lock a loop needs for longer than a
// constant-time step (see incoming_), so its low priority cannot stall one.
constexpr int kWriterNice = 19;

std::size_t record_size(const ExchangeRecord& r) {
  return r.request_http.size() + r.response_http.size() + r.target_uri.size() + 512;
}

}  // namespace

std::unique_ptr<ArchiveService> ArchiveService::start(ServiceOptions opts, tls::EvpPkeyPtr key,
                                                      std::string* error) {
  // "record": the service syncs once per batch itself (group commit).
  WriterOptions wo = opts.writer;
  if (wo.sync == SyncMode::record) wo.sync = SyncMode::none;
  RecoveryReport rep;
  tls::EvpPkeyPtr prune_key = key ? tls::up_ref(key.get()) : nullptr;
  auto writer = SegmentWriter::open(wo, std::move(key), &rep, error);
  if (!writer) return nullptr;
  // The writer logs what recovery kept and cut (archive_recovered).
  auto svc = std::unique_ptr<ArchiveService>(
      new ArchiveService(std::move(opts), std::move(writer), std::move(prune_key)));
  svc->thread_ = std::thread([s = svc.get()] { s->run(); });
  return svc;
}

ArchiveService::ArchiveService(ServiceOptions opts, std::unique_ptr<SegmentWriter> writer, tls::EvpPkeyPtr key)
    : opts_(std::move(opts)), writer_(std::move(writer)), key_(std::move(key)) {
  // Swapped back and forth, never reallocated at a steady load.
  incoming_.reserve(4 * kBatch);
  taken_.reserve(4 * kBatch);
}

// Retention on the writer thread: deleting files never runs on a loop, and
// never concurrently with this writer's own sealing.
void ArchiveService::maybe_prune(std::chrono::steady_clock::time_point now) {
  if (opts_.retention_days == 0 || now < next_prune_) return;
  next_prune_ = now + opts_.prune_interval;
  PruneOptions po;
  po.dir = opts_.writer.dir;
  po.retention_days = opts_.retention_days;
  po.signing_key = key_.get();
  std::string err;
  auto res = prune(po, &err);
  if (!res) {
    log::emit(log::Line(log::Level::error, "archive_prune_failed").str("msg", err));
    return;
  }
  log_prune_result(*res);
  stats_.pruned.fetch_add(res->deleted.size(), std::memory_order_relaxed);
}

ArchiveService::~ArchiveService() { stop(); }

void ArchiveService::submit(ExchangeRecord rec) {
  std::size_t size = record_size(rec);
  auto shared = std::make_shared<ExchangeRecord>(std::move(rec));
  submit([shared] { return std::move(*shared); }, size);
}

std::shared_ptr<ArchiveService::ReturnList>& ArchiveService::this_threads_list() {
  thread_local std::shared_ptr<ReturnList> list = std::make_shared<ReturnList>();
  return list;
}

void ArchiveService::submit(std::function<ExchangeRecord()> build, std::size_t size, std::shared_ptr<const void> keep) {
  std::shared_ptr<ReturnList>& home = this_threads_list();
  {
    // Released here, on the thread that allocated them (see service.h). The
    // two vectors trade places and keep their capacity: no allocation.
    thread_local std::vector<std::shared_ptr<const void>> written;
    {
      std::lock_guard lock(home->mu);
      written.swap(home->items);
    }
    written.clear();
  }
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      stats_.dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    std::shared_ptr<ReturnList> return_to = keep ? home : nullptr;
    incoming_.push_back({std::move(build), size, std::nullopt, std::move(keep), std::move(return_to)});
    const std::uint64_t queued = stats_.queued.fetch_add(1, std::memory_order_relaxed) + 1;
    stats_.queued_bytes.fetch_add(size, std::memory_order_relaxed);
    // While gathering, the writer is woken only by a full batch or a full queue.
    if (!idle_ && queued < kBatch && !over_limit()) return;
  }
  wake_.notify_one();
}

void ArchiveService::when_drained(std::function<void()> fn) {
  {
    std::lock_guard lock(mu_);
    if (stats_.queued_bytes.load(std::memory_order_relaxed) > resume_below() && !stopping_) {
      drained_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

std::string ArchiveService::failure() const {
  std::lock_guard lock(mu_);
  return failure_;
}

void ArchiveService::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void ArchiveService::set_failing(const std::string& why) {
  stats_.failures.fetch_add(1, std::memory_order_relaxed);
  bool was = failing_.exchange(true, std::memory_order_relaxed);
  bool changed = why != failure_;
  failure_ = why;
  // One line when it starts failing or the reason changes, not one per retry.
  if (!was || changed)
    log::emit(log::Line(log::Level::error, "archive_write_failed")
                  .str("msg", why)
                  .str("on_failure", opts_.fail_open ? "open" : "closed"));
}

void ArchiveService::clear_failing() {
  if (!failing_.exchange(false, std::memory_order_relaxed)) return;
  log::emit(log::Line(log::Level::warn, "archive_write_recovered").str("after", failure_));
  failure_.clear();
}

// Called with mu_ held; releases it while the callbacks run.
void ArchiveService::run_drained_if_room() {
  if (drained_.empty() || stats_.queued_bytes.load(std::memory_order_relaxed) > resume_below()) return;
  std::vector<std::function<void()>> fns;
  fns.swap(drained_);
  mu_.unlock();
  for (auto& fn : fns) fn();
  mu_.lock();
}

// Moves what was submitted to pending_: one swap under the lock.
void ArchiveService::take_incoming(std::unique_lock<std::mutex>& lock) {
  if (!incoming_.empty()) incoming_.swap(taken_);
  lock.unlock();
  for (Item& item : taken_) pending_.push_back(std::move(item));
  taken_.clear();
  lock.lock();
}

// Appends up to kBatch pending exchanges in one write; false when it failed
// (fail closed: the records stay pending for the next attempt). Runs on the
// writer thread without mu_, which it takes only to report failures and
// wake paused connections.
bool ArchiveService::write_batch() {
  const std::size_t n = std::min(pending_.size(), kBatch);
  std::vector<const ExchangeRecord*> records;
  records.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    Item& item = pending_[i];
    if (!item.record) item.record = item.build();
    records.push_back(&*item.record);
  }
  SegmentWriter::AppendResult res = writer_->append_all(records);
  notify_seals();  // append_all rotates by size
  // What the written exchanges kept alive goes back to the threads that
  // allocated it, one lock per thread and batch.
  std::shared_ptr<ReturnList> home;
  std::vector<std::shared_ptr<const void>> returning;
  auto flush_returns = [&] {
    if (!home || returning.empty()) return;
    std::lock_guard home_lock(home->mu);
    for (auto& k : returning) home->items.push_back(std::move(k));
    returning.clear();
  };
  auto pop = [&] {
    Item& item = pending_.front();
    stats_.queued.fetch_sub(1, std::memory_order_relaxed);
    stats_.queued_bytes.fetch_sub(item.size, std::memory_order_relaxed);
    item.build = nullptr;  // may refer to `keep`
    item.record.reset();
    if (item.home) {
      if (item.home != home) {
        flush_returns();
        home = item.home;
      }
      returning.push_back(std::move(item.keep));
    }
    pending_.pop_front();
  };
  std::uint64_t http_bytes = 0;
  for (std::size_t i = 0; i < res.written; ++i) {
    const ExchangeRecord& rec = *pending_.front().record;
    http_bytes += rec.request_http.size() + rec.response_http.size();
    pop();
  }
  if (res.error) {
    std::lock_guard lock(mu_);
    set_failing(*res.error);
  } else if (n > 0 && failing_.load(std::memory_order_relaxed)) {
    std::lock_guard lock(mu_);
    clear_failing();
  }
  const bool dropping = res.error && opts_.fail_open;
  if (dropping) {
    // Fail open: what this attempt could not write is dropped, and counted.
    for (std::size_t i = res.written; i < n; ++i) {
      stats_.dropped.fetch_add(1, std::memory_order_relaxed);
      pop();
    }
  }
  // Counted once what they kept alive is back with its threads, and no
  // longer referenced here: a thread that ends frees its list, and what is
  // on it, itself.
  flush_returns();
  home.reset();
  stats_.written.fetch_add(res.written, std::memory_order_relaxed);
  stats_.bytes.fetch_add(http_bytes, std::memory_order_relaxed);
  if (res.error && !dropping) return false;
  std::optional<std::string> err;
  if (opts_.writer.sync == SyncMode::record && n) err = writer_->sync();
  auto now = WallClock::now();
  if (!err) err = writer_->maybe_sync(now);
  if (!err) err = writer_->maybe_rotate(now);
  notify_seals();
  maybe_prune(std::chrono::steady_clock::now());
  std::unique_lock lock(mu_);
  if (err) set_failing(*err);
  run_drained_if_room();
  return true;
}

void ArchiveService::run() {
  pthread_setname_np(pthread_self(), "sl-archive");
  // Background work: the event loops (and the origin and clients sharing the
  // machine) come first when cores are contended; the queue absorbs bursts
  // and back-pressure bounds it. SCHED_BATCH also stops the writer's wake-ups
  // from preempting a loop. Lowering one's own priority needs no privilege.
  sched_param param{};
  if (pthread_setschedparam(pthread_self(), SCHED_BATCH, &param) != 0 ||
      setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), kWriterNice) != 0)
    log::emit(log::Line(log::Level::warn, "archive_priority_unchanged").str("msg", std::strerror(errno)));
  std::unique_lock lock(mu_);
  for (;;) {
    if (incoming_.empty() && pending_.empty()) {
      if (stopping_) break;
      idle_ = true;
      wake_.wait_for(lock, kTick);
      idle_ = false;
      if (incoming_.empty()) {
        lock.unlock();
        auto now = WallClock::now();
        auto err = writer_->maybe_sync(now);
        if (!err) err = writer_->maybe_rotate(now);
        notify_seals();
        maybe_prune(std::chrono::steady_clock::now());
        lock.lock();
        if (err) set_failing(*err);
      }
      continue;
    }
    // Gather (group commit): what arrives within commit_delay joins this batch.
    wake_.wait_for(lock, opts_.commit_delay,
                   [this] { return stopping_ || waiting() >= kBatch || over_limit(); });
    take_incoming(lock);
    lock.unlock();
    const bool written = write_batch();
    lock.lock();
    if (written) continue;
    if (stopping_) {
      // One last attempt failed: what is left cannot be written. Say so loudly.
      take_incoming(lock);
      log::emit(log::Line(log::Level::error, "archive_unwritten")
                    .num("exchanges", static_cast<std::uint64_t>(pending_.size()))
                    .str("msg", failure_));
      stats_.dropped.fetch_add(pending_.size(), std::memory_order_relaxed);
      pending_.clear();
      stats_.queued.store(0, std::memory_order_relaxed);
      stats_.queued_bytes.store(0, std::memory_order_relaxed);
      break;
    }
    wake_.wait_for(lock, opts_.retry_interval, [this] { return stopping_; });
  }
  // Connections still waiting for room: there will be no more writes.
  std::vector<std::function<void()>> fns;
  fns.swap(drained_);
  lock.unlock();
  for (auto& fn : fns) fn();
  if (auto err = writer_->seal()) {
    stats_.failures.fetch_add(1, std::memory_order_relaxed);
    log::emit(log::Line(log::Level::error, "archive_seal_failed").str("msg", *err));
  }
  notify_seals();
}

void ArchiveService::notify_seals() {
  const std::uint64_t n = writer_->seals();
  if (n == seals_seen_) return;
  seals_seen_ = n;
  if (opts_.on_sealed) opts_.on_sealed();
}

}  // namespace sightline::archive
