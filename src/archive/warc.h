// WARC/1.1 (ISO 28500) records for the compliance archive: building them, one
// gzip member each (so a segment is a standard .warc.gz), and reading them
// back member by member for verification and crash recovery.
//
// Besides the standard fields every record carries two sightline fields
// (docs/archive.md):
//   WARC-Sightline-Seq: N            writer-wide record number, from 1
//   WARC-Sightline-Chain: sha256:HEX chain value after this record
// The record digest (what the chain hashes) covers the record's header
// except the WARC-Sightline-Chain line; the header's WARC-Block-Digest
// commits it to the block.
#pragma once

#include "exchange/exchange.h"

#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sightline::archive {

using WallClock = std::chrono::system_clock;
using Digest = std::array<unsigned char, 32>;

inline constexpr std::string_view kSeqHeader = "WARC-Sightline-Seq";
inline constexpr std::string_view kChainHeader = "WARC-Sightline-Chain";

// One archived HTTP exchange, independent of the proxy's internals. The HTTP
// blocks are HTTP/1.1-style bytes (head + body, see http_request_block);
// HTTP/2 exchanges are serialized that way by the caller.
struct ExchangeRecord {
  std::string target_uri;
  std::string request_http;
  std::string response_http;  // empty: no response (the exchange failed first)
  bool request_truncated = false;   // body cut at the archive's cap
  bool response_truncated = false;
  // The body is already compressed (Content-Encoding) or of a type that
  // does not compress: its record is stored in its gzip member (level 0)
  // instead of deflated again, which would cost CPU for nothing.
  bool request_store = false;
  bool response_store = false;
  std::string server_ip;  // WARC-IP-Address of the response; empty: omitted
  // User, client address, policy rule, TLS of both legs, upstream certificate,
  // verdict, timings: the metadata record's JSON text (application/json),
  // formatted by the caller (no JSON tree per exchange). Empty: "{}".
  std::string metadata_json;
  WallClock::time_point timestamp = WallClock::now();
};

// Serializes a head and its (already capped) body as an application/http
// block. The body is stored as given: callers pass it de-chunked, so framing
// headers describe the original message, not the stored bytes. An HTTP/2
// request without a Host field gets one from :authority.
std::string http_request_block(const exchange::Head& head, std::string_view body);
// True when a message with this head carries a body not worth deflating:
// a Content-Encoding other than identity, or a media type that is already
// compressed (images but SVG, audio, video, archives, fonts, octet-stream).
bool body_incompressible(const exchange::Head& head);
std::string http_response_block(const exchange::Head& head, std::string_view body);

// --- digests and encodings ---
Digest sha256(std::string_view data);
Digest sha256_parts(std::initializer_list<std::string_view> parts);  // of their concatenation
// chain_n = SHA-256(chain_{n-1} || record_digest_n)
Digest chain_next(const Digest& prev, const Digest& record_digest);
std::string to_hex(std::string_view bytes);
void append_hex(std::string& out, std::string_view bytes);
inline void append_hex(std::string& out, const Digest& d) {
  append_hex(out, std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}
inline std::string to_hex(const Digest& d) {
  return to_hex(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}
std::optional<Digest> digest_from_hex(std::string_view hex);
// RFC 4648 base32, upper case, padded: what WARC tools expect after "sha256:".
std::string base32(const Digest& d);
std::string warc_digest(std::string_view data);  // "sha256:BASE32"
void append_warc_digest(std::string& out, std::string_view data);  // the same, appended

std::string new_record_id();  // "<urn:uuid:...>", random version 4
std::string warc_date(WallClock::time_point t);  // 2026-11-27T01:02:03.123456Z

// --- building ---
struct WarcHeader {
  std::string name;
  std::string value;
};

struct WarcRecord {
  std::vector<WarcHeader> headers;  // WARC-Type first; Content-Length is added
  std::string block;
};

// The record's bytes without the chain line, and with it (appended last).
std::string serialize_unchained(const WarcRecord& r);
std::string add_chain_header(std::string_view unchained, const Digest& chain);

// How a record's gzip member is compressed. `fast` is ISA-L's igzip at its
// fastest level (static Huffman codes, no per-member tables): about 5x less
// CPU than zlib's fastest level on records of a few KiB, for members about a
// quarter larger. zlib levels run from 0 (stored) to 9 (smallest).
//
// Records smaller than `min_bytes` are stored whatever the codec: each member
// starts with an empty dictionary, so a record of a few hundred bytes to
// ~2 KiB (request heads, metadata) shrinks by a third at most, while the
// compressor's per-member setup costs more than the rest of the record's
// writing (bench/archive_bench: 8 of 21 us per W2 exchange, for 9 % of
// its bytes).
struct Compression {
  enum class Codec { fast, zlib };
  static constexpr std::size_t kDefaultMinBytes = 2048;
  Codec codec = Codec::fast;
  int level = 0;  // zlib only
  std::size_t min_bytes = kDefaultMinBytes;
  static constexpr Compression stored() { return {Codec::zlib, 0, 0}; }
  static constexpr Compression zlib(int lvl, std::size_t min = kDefaultMinBytes) { return {Codec::zlib, lvl, min}; }
};

// One gzip member (RFC 1952) holding `data`; nullopt only if the compressor
// fails (out of memory).
std::optional<std::string> gzip_member(std::string_view data, Compression how = {});
// The same, appended to `out` (no intermediate string); false, and `out`
// unchanged, on failure.
bool append_gzip_member(std::string& out, std::string_view data, Compression how = {});

// --- reading ---
struct ParsedRecord {
  std::vector<WarcHeader> headers;
  std::string_view block;
  const std::string* header(std::string_view name) const;  // case-insensitive
};
// A whole record: "WARC/1.1", fields, blank line, Content-Length bytes, CRLFCRLF.
std::optional<ParsedRecord> parse_record(std::string_view data, std::string* why);
// SHA-256 of the record's header (through the blank line) with its
// WARC-Sightline-Chain line removed. Works on a record with or without that
// line; a reader must check WARC-Block-Digest against the block as well.
Digest record_digest(std::string_view record);
// The HTTP entity body of an application/http block (after the blank line).
std::string_view http_payload(std::string_view block);

struct Member {
  std::uint64_t offset = 0;
  std::uint64_t compressed_length = 0;
  std::string data;  // uncompressed
};

struct MemberScan {
  std::vector<Member> members;
  std::uint64_t good_end = 0;   // end of the last complete member
  std::uint64_t file_size = 0;
  std::string tail_error;       // why the bytes after good_end are not a member
  bool complete() const { return good_end == file_size; }
};

// Splits a .warc.gz into gzip members, from `start`. Stops at the first
// incomplete or corrupt member: everything from good_end on is a torn tail.
MemberScan scan_members(std::string_view file, std::uint64_t start = 0);

// A read-only view of a whole file (mmap), so a large segment is not copied.
class MappedFile {
 public:
  static std::optional<MappedFile> open(const std::string& path, std::string* error);
  MappedFile(MappedFile&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(o.size_) {}
  MappedFile& operator=(MappedFile&&) = delete;
  MappedFile(const MappedFile&) = delete;
  ~MappedFile();
  std::string_view bytes() const { return {static_cast<const char*>(data_), size_}; }

 private:
  MappedFile(void* data, std::size_t size) : data_(data), size_(size) {}
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace sightline::archive
