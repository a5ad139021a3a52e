// What the writer and the verifier agree on beyond single records: segment
// file names, the signed manifest of a sealed segment, and the per-record
// facts both check (digests, chain header). docs/archive.md describes it.
#pragma once

#include "archive/warc.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::archive {

inline constexpr std::string_view kSealedSuffix = ".warc.gz";
inline constexpr std::string_view kOpenSuffix = ".warc.gz.open";
inline constexpr std::string_view kManifestSuffix = ".manifest.json";  // after the sealed name
inline constexpr std::string_view kSignatureSuffix = ".manifest.json.sig";
// The per-record list of a segment (format /2), one tab-separated line per
// record; the signed manifest carries its SHA-256 (docs/archive.md).
inline constexpr std::string_view kRecordsSuffix = ".records.tsv";
inline constexpr std::string_view kRecordsHeader = "# sightline-archive-records/1\tseq\toffset\tlength\tid\ttype\tsha256\n";
inline constexpr Digest kZeroChain{};  // what a writer's first record chains from

// Writer ids are [A-Za-z0-9_.]+ so that '-' separates the name's parts:
// <writer>-<YYYYMMDDTHHMMSSZ>-<seq, 6+ digits>.warc.gz[.open]
bool valid_writer_id(std::string_view id);
std::string segment_name(std::string_view writer, WallClock::time_point created, std::uint64_t seq);

struct SegmentName {
  std::string writer;
  std::uint64_t seq = 0;
  bool open = false;
  std::string sealed_name;  // the name without ".open"
};
// Accepts a sealed or open segment name; nullopt for anything else.
std::optional<SegmentName> parse_segment_name(std::string_view file_name);

struct ManifestRecord {
  std::uint64_t seq = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;  // compressed (the gzip member)
  std::string id;
  std::string type;
  Digest digest{};  // record digest
  Digest chain{};   // chain value after this record
};

// A file of an earlier segment the S3 shipper confirmed (ship.h): the
// object version that is the archive's copy, bound into the next manifest's
// signature so a version uploaded over the key later is seen as tampering.
struct ShippedRef {
  std::string file;
  std::string key;
  std::string version_id;
  std::string sha256;
};

struct Manifest {
  std::string format;   // "sightline-archive-manifest/2" (records file) or "/1" (records listed inline)
  std::string segment;  // sealed file name
  std::string file_sha256;
  std::uint64_t file_size = 0;
  std::string writer;
  std::uint64_t segment_seq = 0;
  std::string previous_segment;  // empty for a writer's first segment
  Digest chain_start{};          // previous segment's chain head, or zeros
  std::uint64_t first_seq = 0;   // of the segment's first record
  std::uint64_t record_count = 0;
  std::string records_file;      // format /2: the records list (sealed name + kRecordsSuffix)
  std::string records_sha256;    // its SHA-256 (hex)
  // Format /1: parsed with the manifest. Format /2: filled by load_records()
  // (load_trusted_manifest() does it once the signature verifies).
  std::vector<ManifestRecord> records;
  Digest chain_head{};
  std::string created;
  std::string sealed;
  std::string key_fingerprint;
  // With S3 shipping: the files confirmed since the previous manifest, and
  // how many bytes of the shipping journal are accounted for so far.
  bool has_shipped = false;
  std::uint64_t shipped_journal_bytes = 0;
  std::vector<ShippedRef> shipped;
};

// "sha256:<hex>", how manifests, tombstones and exports write chain values
// and record digests, and back.
std::string sha256_field(const Digest& d);
std::optional<Digest> parse_sha256_field(std::string_view text);
// A whole decimal number, nothing else.
std::optional<std::uint64_t> parse_u64(std::string_view s);

// The exact bytes that are signed (pretty JSON, one trailing newline):
// format /2, the records in `records_file`, not listed.
std::string manifest_json(const Manifest& m);
// Format /1 or /2; for /2 without the records (see load_records).
std::optional<Manifest> parse_manifest(std::string_view text, std::string* why);

// One record's line of a records file, appended to `out`.
void append_records_line(std::string& out, std::uint64_t seq, std::uint64_t offset, std::uint64_t length,
                         std::string_view id, std::string_view type, const Digest& digest);
// Reads m.records_file (in `dir`) into m.records, checking it against the
// manifest: its SHA-256, record count, first number and chain head. A no-op
// for format /1. false: why not (missing, modified, unparsable).
bool load_records(const std::string& dir, Manifest& m, std::string* why);

// The "sha256" field of a manifest file, read from its first bytes only (the
// field order is fixed): a cheap check that an index is the sealed file's,
// even when the manifest lists a million records. Not a verification.
std::optional<std::string> peek_manifest_sha256(const std::string& manifest_path);

// A small file's whole text (manifest, signature); nullopt if unreadable.
std::optional<std::string> read_text_file(const std::string& path);

// --- durable file output (the writer, the index, exports, holds, tombstones) ---
std::string errno_text(std::string_view what, const std::string& path, int err);  // "what path: strerror"
bool fsync_dir(const std::string& dir);
std::optional<std::string> write_all_at(int fd, std::string_view data, std::uint64_t offset, const std::string& path);
// Temporary name (path + ".tmp"), fsync, rename: a reader sees the whole file
// or none. nullopt: written; otherwise the error text.
std::optional<std::string> write_file_durably(const std::string& path, std::string_view text, unsigned mode = 0440);

// One member of a segment, checked on its own (no chain walk).
struct RecordInfo {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::string id;
  std::string type;
  std::optional<std::uint64_t> seq;  // WARC-Sightline-Seq
  Digest digest{};
  std::optional<Digest> chain;  // WARC-Sightline-Chain
  std::string problem;          // unparsable or a digest that does not match; empty: fine
};
RecordInfo inspect_record(const Member& m);

// Whether `r` links from `prev`; the reason when not.
std::optional<std::string> chain_link_problem(const RecordInfo& r, const Digest& prev);

}  // namespace sightline::archive
