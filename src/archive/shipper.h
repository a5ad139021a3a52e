// The proxy's own S3 shipper: a thread that runs ship_sealed() after each
// seal and every `interval`, backs off (capped, with jitter) while the store
// fails, and keeps the backlog for metrics and /readyz. Never on an event
// loop: uploads block.
#pragma once

#include "archive/ship.h"
#include "tls/ossl.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace sightline::archive {

struct ShipperOptions {
  ShipOptions ship;
  s3::ClientOptions client;
  std::chrono::milliseconds interval{std::chrono::seconds(30)};  // a pass when nothing pokes it
  std::chrono::milliseconds backoff_min{std::chrono::seconds(1)};
  std::chrono::milliseconds backoff_max{std::chrono::minutes(5)};
  // /readyz says not ready past either (0: never for that reason): traffic
  // keeps flowing, but a load balancer can move clients to a proxy whose
  // archive reaches the store.
  std::uint64_t ready_backlog_bytes = 0;
  std::chrono::seconds ready_backlog_age{0};
  // Local copies of shipped segments are deleted this long after the store
  // confirmed them (a signed tombstone each, as retention does); nullopt:
  // kept. Needs the archive's private key for the tombstones.
  std::optional<std::chrono::seconds> delete_local_after;
  // archive.retention_days, applied here instead of by the writer while
  // shipping is on: a segment past retention is deleted locally only once
  // it is in the bucket.
  unsigned retention_days = 0;
  tls::EvpPkeyPtr signing_key;
};

struct ShipperStats {
  std::atomic<std::uint64_t> segments{0};  // shipped (complete)
  std::atomic<std::uint64_t> files{0};
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> adopted{0};   // found in the store after a crash, not sent again
  std::atomic<std::uint64_t> failures{0};  // passes that left segments behind
  std::atomic<std::uint64_t> backlog_segments{0};
  std::atomic<std::uint64_t> backlog_bytes{0};
  std::atomic<std::int64_t> backlog_age_s{0};
  std::atomic<std::int64_t> last_success_unix{0};
  std::atomic<std::uint64_t> local_deleted{0};  // local copies removed after shipping
};

class ArchiveShipper {
 public:
  // Opens the journal (cutting a torn tail, logged) and starts the thread,
  // whose first pass runs at once: what an earlier run left is shipped now.
  static std::unique_ptr<ArchiveShipper> start(ShipperOptions opts, std::string* why);
  ~ArchiveShipper();
  ArchiveShipper(const ArchiveShipper&) = delete;
  ArchiveShipper& operator=(const ArchiveShipper&) = delete;

  void poke();  // a segment was sealed: ship without waiting for the interval
  void stop();  // aborts the transfer in progress and joins the thread
  const ShipperStats& stats() const { return stats_; }
  std::string journal_path() const { return journal_.path(); }
  // Why /readyz should fail because of the backlog; empty when it should not.
  std::string not_ready() const;

 private:
  ArchiveShipper(ShipperOptions opts, ShipJournal journal);
  void run();
  void pass();
  void pass_or_log();
  void delete_shipped_local_copies();

  ShipperOptions opts_;
  ShipJournal journal_;
  s3::Client client_;
  ShipperStats stats_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool poked_ = true;
  bool stopping_ = false;
  std::atomic<bool> stop_flag_{false};  // read by ship_sealed and libcurl's progress callback
  unsigned consecutive_failures_ = 0;
  std::string last_error_;
  std::thread thread_;
};

}  // namespace sightline::archive
