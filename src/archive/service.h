// The compliance archive in the running proxy: one writer thread that takes
// archived exchanges from a bounded queue and appends them to WARC segments
// (SegmentWriter), so no disk write ever runs on an event loop.
//
// Never drops silently:
//  - a full queue (over `queue_bytes`) makes archived connections pause
//    (they ask over_limit() after each read and wait for when_drained());
//    records already on their way are still taken, so the queue can pass
//    its limit by at most one read per archived connection;
//  - a write that fails (disk full, EACCES, I/O error) is retried every
//    `retry_interval` with the record kept at the head of the queue; while
//    it fails, failing() is true and the proxy refuses new archived traffic
//    (fail closed, the default). With on_failure = "open" records that
//    cannot be written are dropped instead, counted and logged.
//
// Group commit: once an exchange arrives the writer gathers what follows for
// `commit_delay` (or until a full batch waits), appends the batch, and in
// sync mode "record" fdatasyncs once before it takes more. Producers wake
// the writer only when it is idle or a full batch waits, so under load the
// writer runs about once per commit_delay instead of once per exchange
// (each wake-up is a futex call on the event loop and a context switch). A
// crash loses at most the batch being gathered or written plus what waits
// in memory.
#pragma once

#include "archive/segment.h"
#include "archive/warc.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace sightline::archive {

struct ServiceOptions {
  WriterOptions writer;  // its `sync` is the configured mode (group commit for "record")
  std::size_t queue_bytes = 64ull << 20;
  bool fail_open = false;
  std::chrono::milliseconds retry_interval{1000};
  std::chrono::milliseconds commit_delay{10};
  // Retention (retention.h): sealed segments older than this many days are
  // pruned (legal holds excepted) at start and every prune_interval; 0 keeps
  // everything.
  unsigned retention_days = 0;
  std::chrono::seconds prune_interval{3600};
  // Called on the writer thread after each seal (the S3 shipper's poke);
  // must not block.
  std::function<void()> on_sealed;
};

class ArchiveService {
 public:
  struct Stats {
    std::atomic<std::uint64_t> written{0};    // exchanges appended
    std::atomic<std::uint64_t> bytes{0};      // their HTTP bytes (request + response blocks)
    std::atomic<std::uint64_t> failures{0};   // failed append, sync or seal attempts
    std::atomic<std::uint64_t> dropped{0};    // fail open only: exchanges not archived
    std::atomic<std::uint64_t> queued{0};     // exchanges waiting now
    std::atomic<std::uint64_t> queued_bytes{0};
    std::atomic<std::uint64_t> pruned{0};  // segments deleted by retention
  };

  // Opens (and recovers) the archive, then starts the writer thread.
  static std::unique_ptr<ArchiveService> start(ServiceOptions opts, tls::EvpPkeyPtr key, std::string* error);
  ~ArchiveService();  // stop()s
  ArchiveService(const ArchiveService&) = delete;
  ArchiveService& operator=(const ArchiveService&) = delete;

  // Thread-safe and never blocks: queues one exchange. `build` runs later
  // on the writer thread (serializing heads and metadata there keeps that
  // work off the event loops); `size` is its approximate size in bytes.
  // `keep` (what `build` reads) is released on the submitting thread, at
  // one of its later submit() calls, once the exchange is written: glibc's
  // per-thread caches only help a thread that frees what it allocated, and
  // the workers allocate every captured head and body. Freed on the writer,
  // they made the workers' allocations take malloc's slow path (~8 us of
  // worker CPU per archived exchange, measured).
  void submit(std::function<ExchangeRecord()> build, std::size_t size, std::shared_ptr<const void> keep = {});
  void submit(ExchangeRecord rec);
  bool over_limit() const { return stats_.queued_bytes.load(std::memory_order_relaxed) > opts_.queue_bytes; }
  // Paused connections resume this far below the limit: enough hysteresis
  // not to pause again at once, small enough that a pause lasts about the
  // time to write 4 MiB, not half the queue (seconds with a large queue).
  std::size_t resume_below() const { return opts_.queue_bytes - std::min(opts_.queue_bytes / 2, std::size_t{4} << 20); }
  // Runs `fn` on the writer thread once the queue is below resume_below()
  // (at once, on the caller's thread, when it already is).
  void when_drained(std::function<void()> fn);
  // The last write failed and none has succeeded since.
  bool failing() const { return failing_.load(std::memory_order_relaxed); }
  std::string failure() const;
  bool fail_open() const { return opts_.fail_open; }

  // Writes what is queued (one more attempt each while failing), seals the
  // current segment and ends the writer thread.
  void stop();

  const Stats& stats() const { return stats_; }
  const std::string& dir() const { return opts_.writer.dir; }

 private:
  ArchiveService(ServiceOptions opts, std::unique_ptr<SegmentWriter> writer, tls::EvpPkeyPtr key);
  void maybe_prune(std::chrono::steady_clock::time_point now);
  void notify_seals();  // writer thread: calls on_sealed once per new seal
  std::uint64_t seals_seen_ = 0;
  void run();
  bool write_batch();
  void take_incoming(std::unique_lock<std::mutex>& lock);
  std::uint64_t waiting() const { return stats_.queued.load(std::memory_order_relaxed); }
  void set_failing(const std::string& why);
  void clear_failing();
  void run_drained_if_room();

  ServiceOptions opts_;
  std::unique_ptr<SegmentWriter> writer_;
  tls::EvpPkeyPtr key_;  // for pruned.json's signature
  std::chrono::steady_clock::time_point next_prune_{};
  Stats stats_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  // What written exchanges leave for one submitting thread to release.
  struct ReturnList {
    std::mutex mu;
    std::vector<std::shared_ptr<const void>> items;
  };
  static std::shared_ptr<ReturnList>& this_threads_list();
  struct Item {
    std::function<ExchangeRecord()> build;
    std::size_t size = 0;
    std::optional<ExchangeRecord> record;  // built once, kept for retries
    std::shared_ptr<const void> keep;
    std::shared_ptr<ReturnList> home;  // where `keep` goes once written
  };
  // The writer holds mu_ only for constant-time steps (a swap, a flag): at
  // its low priority it can be preempted while holding it, and a submitting
  // event loop would wait that long.
  std::vector<Item> incoming_;  // under mu_: submitted since the writer last took them
  std::vector<Item> taken_;     // writer only: swapped with incoming_ (empty between takes)
  std::deque<Item> pending_;    // writer only: taken, not yet written (kept for retries)
  std::vector<std::function<void()>> drained_;
  std::string failure_;
  bool stopping_ = false;
  bool idle_ = false;  // the writer waits for the next exchange (not gathering one)
  std::atomic<bool> failing_{false};
  std::thread thread_;
};

}  // namespace sightline::archive
