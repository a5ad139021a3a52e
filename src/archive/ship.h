// Shipping sealed segments to S3 Object Lock (WORM) storage.
//
// Each sealed segment's files go to
//   <prefix>/<node-id>/<yyyy>/<mm>/<dd>/<file name>
// (the date of the segment's seal, UTC): the segment, its records file, its
// index sidecar, then its manifest and signature last, so a manifest in the
// bucket means the rest is there. Every PUT carries Content-MD5 and
// x-amz-content-sha256, the lock mode and retain-until date (seal time +
// retention) and x-amz-meta-sha256; it counts only once the server answered
// 2xx with an ETag equal to the MD5 sent (single PUTs) and a version id.
//
// The shipping journal (DIR/shipping.journal, JSON lines, appended and
// fdatasync'ed per confirmed file) survives crashes: a torn last line is cut
// on open, and a file whose PUT was confirmed but not journaled is found by
// HEAD (same x-amz-meta-sha256) and adopted, not uploaded twice.
#pragma once

#include "archive/s3.h"
#include "hooks/pcap.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace sightline::archive {

struct ShippedFile {
  std::string segment;  // sealed segment name
  std::string file;     // file name in the archive directory
  std::string key;      // object key
  std::string version_id;
  std::string etag;
  std::string sha256;   // hex, of the file's bytes
  std::uint64_t size = 0;
  std::string retain_until;  // RFC 3339, empty without a lock
  std::string shipped_at;
  bool adopted = false;      // found already uploaded (HEAD), not sent again
};

class ShipJournal {
 public:
  // Reads DIR/shipping.journal (creating it), cutting a torn last line, and
  // holds DIR/.ship.lock until destroyed: one shipper per directory.
  static std::optional<ShipJournal> open(const std::string& dir, std::string* why);

  // A file of a segment not yet complete; complete segments keep no files.
  const ShippedFile* find(const std::string& file) const;
  bool complete(const std::string& segment) const { return complete_.count(segment) > 0; }
  // When the segment's last file was confirmed (RFC 3339), empty if not complete.
  std::string completed_at(const std::string& segment) const {
    auto it = complete_.find(segment);
    return it == complete_.end() ? std::string() : it->second.at;
  }
  // "KEY version V" of a complete segment's manifest, for logs and tombstones.
  std::string manifest_ref(const std::string& segment) const {
    auto it = complete_.find(segment);
    if (it == complete_.end() || it->second.manifest_key.empty()) return segment;
    return it->second.manifest_key + " version " + it->second.manifest_version;
  }
  // Appended and synced before they return.
  std::optional<std::string> record(const ShippedFile& f);
  std::optional<std::string> record_complete(const std::string& segment, const std::string& manifest_version);
  std::string path() const { return path_; }
  std::size_t cut_bytes() const { return cut_bytes_; }  // torn tail removed on open

 private:
  struct CompleteSegment {
    std::string at, manifest_key, manifest_version;
  };
  void mark_complete(const std::string& segment, const std::string& at);
  std::optional<std::string> append(const std::string& line);
  std::string path_;
  hooks::pcap::UniqueFd lock_;  // flock on DIR/.ship.lock
  std::map<std::string, ShippedFile> files_;  // by file name
  std::map<std::string, CompleteSegment> complete_;
  std::size_t cut_bytes_ = 0;
};

struct ShipOptions {
  std::string dir;
  std::string node_id;  // key component; default: the segments' writer id
  // nullopt: no lock headers (a bucket default retention may still apply,
  // unchecked). With a mode, retention must be at least 1 s.
  std::optional<s3::LockMode> lock_mode = s3::LockMode::compliance;
  std::chrono::seconds retention{0};  // retain-until = seal time + this
  bool legal_hold = false;
  std::uint64_t multipart_threshold = 64ull << 20;
  std::uint64_t part_size = 16ull << 20;
  const std::atomic<bool>* stop = nullptr;  // set: the pass ends before the next file
};

struct ShipReport {
  std::vector<ShippedFile> shipped;        // this run, in order
  std::vector<std::string> done_segments;  // completed this run
  std::vector<std::string> errors;         // "segment: reason"; the segment stays for the next run
  std::size_t backlog_segments = 0;        // sealed, not yet complete after this run
  std::uint64_t backlog_bytes = 0;
  std::int64_t oldest_backlog_s = 0;       // age of the oldest unshipped seal
};

// Ships every sealed segment of opts.dir the journal does not list as
// complete, oldest first; stops at the first S3 transport failure (the
// store is down: the rest waits for the next run).
ShipReport ship_sealed(const ShipOptions& opts, s3::Client& client, ShipJournal& journal);

// SHA-256 (hex) of a file, streamed; empty when it cannot be read.
std::string file_sha256_hex(const std::string& path);

// The key of a segment file: <prefix>/<node>/<yyyy>/<mm>/<dd>/<file>.
std::string ship_key(const s3::Client& client, const std::string& node, const std::string& sealed_rfc3339,
                     const std::string& file);

}  // namespace sightline::archive
