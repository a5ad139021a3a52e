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

ArchiveShipper::ArchiveShipper(ShipperOptions opts, ShipJournal journal)
    : opts_(std::move(opts)), journal_(std::move(journal)), client_(opts_.client) {}

ArchiveShipper::~ArchiveShipper() { stop(); }

void ArchiveShipper::poke() {
  {
    std::lock_guard lock(mu_);
    poked_ = true;
  }
  wake_.notify_one();
}

void ArchiveShipper::stop() {
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
  for (const auto& seg : rep.done_segments) {
    const ShippedFile* m = journal_.find(seg + std::string(kManifestSuffix));
    log::emit(log::Line(log::Level::info, "archive_shipped")
                  .str("segment", seg)
                  .str("key", m ? m->key : std::string())
                  .str("manifest_version_id", m ? m->version_id : std::string())
                  .str("retain_until", m ? m->retain_until : std::string()));
  }
  delete_shipped_local_copies();
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  std::lock_guard lock(mu_);
  if (rep.errors.empty()) {
    stats_.last_success_unix.store(now, std::memory_order_relaxed);
    if (consecutive_failures_ > 0)
      log::emit(log::Line(log::Level::warn, "archive_ship_recovered")
                    .num("failed_passes", static_cast<std::uint64_t>(consecutive_failures_))
                    .str("after", last_error_));
    consecutive_failures_ = 0;
    last_error_.clear();
    return;
  }
  stats_.failures.fetch_add(1, std::memory_order_relaxed);
  ++consecutive_failures_;
  // One line per pass, backed off: a store down for hours logs a few
  // hundred lines, not one per segment and retry.
  last_error_ = rep.errors.front();
  log::emit(log::Line(log::Level::error, "archive_ship_failed")
                .str("msg", last_error_)
                .num("errors", static_cast<std::uint64_t>(rep.errors.size()))
                .num("backlog_segments", static_cast<std::uint64_t>(rep.backlog_segments))
                .num("backlog_bytes", rep.backlog_bytes)
                .num("backlog_age_s", rep.oldest_backlog_s)
                .num("failed_passes", static_cast<std::uint64_t>(consecutive_failures_)));
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
    const ShippedFile* m = journal_.find(segment + std::string(kManifestSuffix));
    const std::string where = "shipped to S3 (" + (m ? m->key + " version " + m->version_id : segment) + ")";
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
  for (const auto& t : res->deleted)
    log::emit(log::Line(log::Level::info, "archive_pruned")
                  .str("segment", t.segment)
                  .str("sealed", t.sealed)
                  .num("records", t.records)
                  .str("chain_head", t.chain_head)
                  .str("manifest_sha256", t.manifest_sha256)
                  .str("reason", t.reason));
  for (const auto& h : res->held) log::emit(log::Line(log::Level::info, "archive_prune_held").str("detail", h));
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
      poked_ = false;  // a seal does not cut a backoff short
    }
    wake_.wait_for(lock, delay, [this] { return stopping_ || poked_; });
    if (stopping_) return;
    poked_ = false;
    lock.unlock();
    pass();
    lock.lock();
  }
}

}  // namespace sightline::archive
