// Retention and legal hold: `prune` deletes sealed segments older than the
// retention period unless a legal hold protects them, and records each
// deletion as a signed tombstone (DIR/pruned.json + .sig) so that
// `sightline archive verify` accepts the gap a legitimate deletion leaves and
// still reports any other. docs/archive.md, "Retention and legal hold".
#pragma once

#include "archive/format.h"
#include "tls/ossl.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace sightline::archive {

inline constexpr std::string_view kHoldsFile = "holds.json";
inline constexpr std::string_view kPrunedFile = "pruned.json";
inline constexpr std::string_view kPrunedSignature = "pruned.json.sig";

// A legal hold. Set fields combine with AND: a segment hold protects that
// segment; a user and/or time-range hold protects every segment holding an
// exchange of that user within the range (both ends optional).
struct Hold {
  std::string id;
  std::string segment;
  std::string user;
  std::string since, until;  // as given (RFC 3339 or date)
  std::string reason;
  std::string by;       // who placed it
  std::string created;  // when
};

// DIR/holds.json; a missing file is no holds.
std::optional<std::vector<Hold>> load_holds(const std::string& dir, std::string* error);
// Assigns id and created; the stored hold, or nullopt with *error.
std::optional<Hold> add_hold(const std::string& dir, Hold hold, std::string* error);
// The removed hold, or nullopt with *error (unknown id, unwritable file).
std::optional<Hold> remove_hold(const std::string& dir, const std::string& id, std::string* error);
nlohmann::ordered_json hold_json(const Hold& h);

// What a pruned segment was: enough to vouch for the gap it leaves in its
// writer's chain (the next segment's manifest names it and its chain head).
struct Tombstone {
  std::string segment;
  std::string writer;
  std::uint64_t segment_seq = 0;
  std::string chain_start, chain_head;  // "sha256:HEX", from its signed manifest
  std::string manifest_sha256;          // hex SHA-256 of the manifest's bytes
  std::string sealed;
  std::uint64_t records = 0;
  std::string deleted;  // when
  std::string reason;
};
nlohmann::ordered_json tombstone_json(const Tombstone& t);

struct Tombstones {
  std::vector<Tombstone> entries;
  bool present = false;  // pruned.json exists (and verified)
};
// DIR/pruned.json if its signature verifies by `key` (public or private);
// nullopt with *error when it exists but does not verify. A missing file is
// no tombstones.
std::optional<Tombstones> load_tombstones(const std::string& dir, EVP_PKEY* key, std::string* error);

struct PruneOptions {
  std::string dir;
  unsigned retention_days = 0;  // 0: nothing is old enough (retention disabled)
  WallClock::time_point now = WallClock::now();
  bool dry_run = false;
  EVP_PKEY* signing_key = nullptr;  // the archive's private key: signs pruned.json
  // Segments this vouches for go too, whatever retention_days says (the S3
  // shipper: confirmed in the bucket long enough ago); what it returns is
  // the tombstone's reason. Legal holds and each writer's latest segment
  // still keep a segment.
  std::function<std::optional<std::string>(const std::string& segment)> also_delete;
};

struct PruneResult {
  std::vector<Tombstone> deleted;    // or, in a dry run, that would be
  std::vector<std::string> held;     // "SEGMENT: hold ID (reason)", past retention but kept
  std::vector<std::string> skipped;  // past retention but not deletable (no trusted manifest, ...)
};

// Deletes sealed segments whose manifest's sealed time is more than
// retention_days before `now`, except segments under a legal hold and each
// writer's latest sealed segment (its writer resumes its chain from that
// manifest). Each deletion is recorded in pruned.json before any file goes.
// Safe to call from a thread of the proxy while its writer runs: open
// segments are never touched, and concurrent prunes serialize on a lock file.
std::optional<PruneResult> prune(const PruneOptions& opts, std::string* error);

// The proxy's log lines for a prune: archive_pruned per deletion (the
// tombstone's facts), archive_prune_held and archive_prune_skipped.
void log_prune_result(const PruneResult& r);

// One JSON line for the deletion log: {"event":"archive_pruned",...}.
std::string deletion_log_line(const Tombstone& t, bool dry_run);

}  // namespace sightline::archive
