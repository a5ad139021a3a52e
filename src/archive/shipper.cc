#include "archive/shipper.h"

#include "archive/format.h"
#include "archive/index.h"
#include "archive/retention.h"
#include "core/log.h"

#include <pthread.h>

#include <algorithm>
#include <filesystem>
#include <random>

namespace sightline::archive {

std::unique_ptr<ArchiveShipper> ArchiveShipper::start(ShipperOptions opts, std::string* why) {
  auto journal = ShipJournal::open(opts.ship.dir, why);
  if (!journal) return nullptr;
  if (journal->cut_bytes())
    log::emit(log::Line(log::Level::warn, "archive_ship_journal_cut")
                  .str("journal", journal->path())
                  .num("bytes", static_cast<std::uint64_t>(journal->cut_bytes())));
  auto s = std::unique_ptr<ArchiveShipper>(new ArchiveShipper(std::move(opts), std::move(*journal)));
  s->thread_ = std::thread([p = s.get()] { p->run(); });
  return s;
}

namespace {
s3::ClientOptions with_stop(s3::ClientOptions o, const std::atomic<bool>* stop) {
  o.stop = stop;
  return o;
}
}  // namespace

ArchiveShipper::ArchiveShipper(ShipperOptions opts, ShipJournal journal)
    : opts_(std::move(opts)), journal_(std::move(journal)), client_(with_stop(opts_.client, &stop_flag_)) {
  opts_.ship.stop = &stop_flag_;
}

ArchiveShipper::~ArchiveShipper() { stop(); }

void ArchiveShipper::poke() {
  {
    std::lock_guard lock(mu_);
    poked_ = true;
  }
  wake_.notify_one();
}

void ArchiveShipper::stop() {
  stop_flag_.store(true, std::memory_order_relaxed);
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

std::string ArchiveShipper::not_ready() const {
  const auto bytes = stats_.backlog_bytes.load(std::memory_order_relaxed);
  const auto age = stats_.backlog_age_s.load(std::memory_order_relaxed);
  std::string why;
  if (opts_.ready_backlog_bytes && bytes > opts_.ready_backlog_bytes)
    why += "archive S3 backlog " + std::to_string(bytes) + " bytes > " + std::to_string(opts_.ready_backlog_bytes) + "\n";
  if (opts_.ready_backlog_age.count() && age > opts_.ready_backlog_age.count())
    why += "archive S3 backlog " + std::to_string(age) + " s old > " +
           std::to_string(opts_.ready_backlog_age.count()) + " s\n";
  return why;
}

void ArchiveShipper::pass() {
  ShipReport rep = ship_sealed(opts_.ship, client_, journal_);
  if (stop_flag_.load(std::memory_order_relaxed)) return;  // cut short by stop(): not a failure
  std::uint64_t bytes = 0, adopted = 0;
  for (const auto& f : rep.shipped) {
    bytes += f.size;
    adopted += f.adopted ? 1 : 0;
  }
  stats_.files.fetch_add(rep.shipped.size(), std::memory_order_relaxed);
  stats_.bytes.fetch_add(bytes, std::memory_order_relaxed);
  stats_.adopted.fetch_add(adopted, std::memory_order_relaxed);
  stats_.segments.fetch_add(rep.done_segments.size(), std::memory_order_relaxed);
  stats_.backlog_segments.store(rep.backlog_segments, std::memory_order_relaxed);
  stats_.backlog_bytes.store(rep.backlog_bytes, std::memory_order_relaxed);
  stats_.backlog_age_s.store(rep.oldest_backlog_s, std::memory_order_relaxed);
  for (const auto& seg : rep.done_segments)
    log::emit(log::Line(log::Level::info, "archive_shipped")
                  .str("segment", seg)
                  .str("manifest", journal_.manifest_ref(seg))
                  .str("completed", journal_.completed_at(seg)));
  delete_shipped_local_copies();
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  unsigned failures = 0, recovered_after = 0;
  std::string recovered_from;
  {
    std::lock_guard lock(mu_);
    if (rep.errors.empty()) {
      recovered_after = consecutive_failures_;
      recovered_from = std::move(last_error_);
      consecutive_failures_ = 0;
      last_error_.clear();
    } else {
      failures = ++consecutive_failures_;
      last_error_ = rep.errors.front();
    }
  }
  // Logged without mu_: poke() on the archive writer's thread never waits on log I/O.
  if (rep.errors.empty()) {
    stats_.last_success_unix.store(now, std::memory_order_relaxed);
    if (recovered_after > 0)
      log::emit(log::Line(log::Level::warn, "archive_ship_recovered")
                    .num("failed_passes", static_cast<std::uint64_t>(recovered_after))
                    .str("after", recovered_from));
    return;
  }
  stats_.failures.fetch_add(1, std::memory_order_relaxed);
  // One line per pass, backed off: a store down for hours logs a few
  // hundred lines, not one per segment and retry.
  log::emit(log::Line(log::Level::error, "archive_ship_failed")
                .str("msg", rep.errors.front())
                .num("errors", static_cast<std::uint64_t>(rep.errors.size()))
                .num("backlog_segments", static_cast<std::uint64_t>(rep.backlog_segments))
                .num("backlog_bytes", rep.backlog_bytes)
                .num("backlog_age_s", rep.oldest_backlog_s)
                .num("failed_passes", static_cast<std::uint64_t>(failures)));
}

// A pass must never end the thread (or, through std::terminate, the proxy):
// whatever it throws is a failed pass with a reason.
void ArchiveShipper::pass_or_log() {
  std::string what;
  try {
    pass();
    return;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "unknown exception";
  }
  stats_.failures.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard lock(mu_);
    ++consecutive_failures_;
    last_error_ = "internal error: " + what;
  }
  log::emit(log::Line(log::Level::error, "archive_ship_failed").str("msg", "internal error: " + what));
}

void ArchiveShipper::delete_shipped_local_copies() {
  if ((!opts_.delete_local_after && opts_.retention_days == 0) || !opts_.signing_key) return;
  const auto now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  PruneOptions po;
  po.dir = opts_.ship.dir;
  po.signing_key = opts_.signing_key.get();
  // Only what the bucket holds goes, once kept locally long enough
  // (delete_local_after) or past retention; prune() itself keeps segments
  // under legal hold and each writer's latest.
  po.also_delete = [&](const std::string& segment) -> std::optional<std::string> {
    auto at = parse_time(journal_.completed_at(segment));
    if (!at) return std::nullopt;
    const std::string where = "shipped to S3 (" + journal_.manifest_ref(segment) + ")";
    if (opts_.delete_local_after && *at + opts_.delete_local_after->count() * 1000000 <= now_us) return where;
    if (opts_.retention_days > 0) {
      std::string text;
      if (auto manifest = read_text_file((std::filesystem::path(opts_.ship.dir) / (segment + std::string(kManifestSuffix))).string()))
        if (auto parsed = parse_manifest(*manifest, &text))
          if (auto sealed = parse_time(parsed->sealed);
              sealed && *sealed + static_cast<std::int64_t>(opts_.retention_days) * 86400 * 1000000 <= now_us)
            return "retention " + std::to_string(opts_.retention_days) + " days, " + where;
    }
    return std::nullopt;
  };
  std::string why;
  auto res = prune(po, &why);
  if (!res) {
    log::emit(log::Line(log::Level::error, "archive_local_delete_failed").str("msg", why));
    return;
  }
  log_prune_result(*res);
  stats_.local_deleted.fetch_add(res->deleted.size(), std::memory_order_relaxed);
}

void ArchiveShipper::run() {
  pthread_setname_np(pthread_self(), "sl-ship");
  std::mt19937_64 rng(std::random_device{}());
  std::unique_lock lock(mu_);
  for (;;) {
    std::chrono::milliseconds delay = opts_.interval;
    if (consecutive_failures_ > 0) {
      // Capped exponential backoff with jitter: many proxies that lost the
      // same store do not come back in lockstep.
      const unsigned shift = std::min(consecutive_failures_ - 1, 20u);
      const std::chrono::milliseconds cap =
          std::min(opts_.backoff_max, std::chrono::milliseconds(opts_.backoff_min.count() << shift));
      std::uniform_real_distribution<double> jitter(0.5, 1.0);
      delay = std::chrono::milliseconds(static_cast<std::int64_t>(static_cast<double>(cap.count()) * jitter(rng)));
    }
    // While backing off, a seal does not cut the wait short (the store is
    // what failed); it is shipped by the next attempt.
    const bool backing_off = consecutive_failures_ > 0;
    wake_.wait_for(lock, delay, [this, backing_off] { return stopping_ || (poked_ && !backing_off); });
    if (stopping_) return;
    poked_ = false;
    lock.unlock();
    pass_or_log();
    lock.lock();
  }
}

}  // namespace sightline::archive
