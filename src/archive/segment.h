// SegmentWriter: appends archived exchanges to WARC segments, seals them
// (signed manifest) and recovers a crashed writer's open segment.
//
// Synchronous and single-threaded: the proxy calls it from one dedicated
// writer thread. Every call that touches the disk returns an error text
// instead of throwing; after an error (disk full, EACCES) the next call
// retries, so the writer recovers by itself once the disk has room. An
// exchange is either wholly in the segment or not at all: a failed write is
// cut off again before anything else is appended.
#pragma once

#include "archive/format.h"
#include "tls/ossl.h"

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace sightline::archive {

enum class SyncMode {
  record,    // fdatasync after each exchange's records
  interval,  // the caller calls maybe_sync() often; fdatasync every sync_interval
  none,      // left to the kernel; a seal still syncs
};

// The configuration's archive.sync value: "record", "interval" or "none".
std::optional<SyncMode> parse_sync_mode(std::string_view text);

struct WriterOptions {
  std::string dir;
  std::string writer_id;  // [A-Za-z0-9_.]+, unique per process writing into dir
  std::uint64_t max_bytes = 1ull << 30;  // rotate before a segment would exceed it
  std::chrono::seconds max_age{3600};    // rotate (maybe_rotate) once a segment is this old
  SyncMode sync = SyncMode::record;
  std::chrono::milliseconds sync_interval{1000};
  Compression compression;  // of each record's gzip member (bodies marked incompressible are stored)
  // With S3 shipping: the shipping journal, whose new entries each manifest
  // lists (Manifest::shipped). Empty: manifests have no "shipped" field.
  std::string ship_journal;
};

// What open() found of a previous run. A crashed writer's open segment is
// cut to its longest valid prefix and sealed; the chain continues from there.
struct RecoveryReport {
  std::string open_segment;         // empty: no open segment was found
  std::uint64_t kept_records = 0;   // including the warcinfo record
  std::uint64_t kept_bytes = 0;
  std::uint64_t cut_bytes = 0;      // torn or unverifiable tail removed
  std::uint64_t cut_records = 0;    // complete members in that tail
  std::string cut_reason;
  bool sealed = false;              // the kept prefix was sealed
  bool removed = false;             // nothing valid: the file was deleted, its seq is reused
  std::string resumed_from;         // manifest whose chain head the writer continues
  std::uint64_t next_record_seq = 1;
};

class SegmentWriter {
 public:
  // Resumes the chain of `writer_id` in `dir` (created if missing) and
  // recovers its open segment, if any. `signing_key` is an Ed25519 private key.
  static std::unique_ptr<SegmentWriter> open(WriterOptions opts, tls::EvpPkeyPtr signing_key,
                                             RecoveryReport* report, std::string* error);
  ~SegmentWriter();
  SegmentWriter(const SegmentWriter&) = delete;
  SegmentWriter& operator=(const SegmentWriter&) = delete;

  // Writes the exchange's request, response and metadata records (opening a
  // segment, or rotating by size, first). nullopt: written (and synced in
  // record mode).
  std::optional<std::string> append(const ExchangeRecord& ex);

  struct AppendResult {
    std::size_t written = 0;           // the first `written` exchanges are in the archive
    std::optional<std::string> error;  // why the others are not
  };
  // The same for several exchanges, in order, with one write per segment
  // instead of one per exchange (a rotation in between writes what came
  // before it first). Exchanges past `written` are not in the archive.
  AppendResult append_all(std::span<const ExchangeRecord* const> exchanges);
  std::optional<std::string> sync();
  std::optional<std::string> maybe_sync(WallClock::time_point now);
  // Seals the current segment when it is older than max_age.
  std::optional<std::string> maybe_rotate(WallClock::time_point now);
  // Seals the current segment (on shutdown); a no-op when none is open.
  std::optional<std::string> seal();

  // The current segment's name (with .open), empty when none is open.
  std::string current_segment() const;
  Digest chain_head() const;
  std::uint64_t next_record_seq() const;
  std::uint64_t seals() const;  // segments this writer sealed since it opened

 private:
  struct State;
  explicit SegmentWriter(std::unique_ptr<State> st);
  std::unique_ptr<State> st_;
};

}  // namespace sightline::archive
