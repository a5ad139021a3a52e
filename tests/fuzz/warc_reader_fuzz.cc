// libFuzzer target for the archive reader: what `sightline archive verify`,
// `search`/`show` and the writer's crash recovery run on segment files and
// manifests found on disk, which may have been damaged or tampered with
// (src/archive/warc.cc, format.cc).
//
// Input: one mode byte, then the bytes.
//   bits 0-1  0: WARC records as a gzip member holds them, several separated
//                by NUL; each is written into a member by the writer's codec
//                (bits 2-3), the members make a segment that is read back;
//             1: a segment file as found on disk (.warc.gz), read from offset
//                mode >> 2 (verify resynchronises at manifest offsets);
//             2, 3: a segment manifest (JSON), read before its signature is
//                checked.
//   bits 2-3  codec for mode 0: stored, ISA-L fast, zlib 1, zlib 9.
//
// Besides crashes: the member scan must account for every byte it read and
// give back exactly what the writer compressed; a record that parses must
// have the block its Content-Length says; the record digest must not depend
// on the chain line (the chain would not verify otherwise); a manifest the
// reader accepts must survive being written and read again.
#include "archive/format.h"
#include "fuzz_check.h"
#include "http/h1_parser.h"  // http::iequals

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

using namespace sightline::archive;
using sightline::fuzz::as_text;
using sightline::http::iequals;
using sightline::fuzz::take_part;

namespace {

bool same_headers(const std::vector<WarcHeader>& a, const std::vector<WarcHeader>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].name != b[i].name || a[i].value != b[i].value) return false;
  return true;
}

// A parsed record written again by the writer's functions (without its
// Content-Length and chain lines, which they add) must read back the same,
// and its record digest must be the same with and without the chain line.
void check_rewrite(const ParsedRecord& rec) {
  WarcRecord w;
  for (const auto& h : rec.headers)
    if (!iequals(h.name, "Content-Length") && !iequals(h.name, kChainHeader)) w.headers.push_back(h);
  w.block = std::string(rec.block);
  const std::string unchained = serialize_unchained(w);
  std::string why;
  const auto again = parse_record(unchained, &why);
  FUZZ_CHECK(again.has_value());
  FUZZ_CHECK(again->block == rec.block);
  auto expected = w.headers;
  expected.push_back({"Content-Length", std::to_string(rec.block.size())});
  FUZZ_CHECK(same_headers(again->headers, expected));

  const Digest chain = sha256(unchained);
  const std::string chained = add_chain_header(unchained, chain);
  FUZZ_CHECK(record_digest(chained) == record_digest(unchained));
  const auto with_chain = parse_record(chained, &why);
  FUZZ_CHECK(with_chain.has_value() && with_chain->block == rec.block);
  const std::string* line = with_chain->header(kChainHeader);
  FUZZ_CHECK(line && parse_sha256_field(*line) == chain);
}

// What verify and recovery do with one member; returns the chain value to
// continue from, as verify's chain walk does.
Digest check_member(const Member& m, const Digest& prev) {
  const RecordInfo info = inspect_record(m);
  FUZZ_CHECK(info.offset == m.offset && info.length == m.compressed_length);
  FUZZ_CHECK(info.digest == record_digest(m.data));
  std::string why;
  const auto rec = parse_record(m.data, &why);
  if (!rec) {
    FUZZ_CHECK(!why.empty() && !info.problem.empty());
  } else {
    const std::string_view data = m.data;
    FUZZ_CHECK(rec->block.data() >= data.data() &&
               rec->block.data() + rec->block.size() <= data.data() + data.size());
    const std::string* length = rec->header("Content-Length");
    FUZZ_CHECK(length && parse_u64(*length) == rec->block.size());
    const std::string_view payload = http_payload(rec->block);
    FUZZ_CHECK(payload.empty() || rec->block.ends_with(payload));
    if (info.problem.empty()) FUZZ_CHECK(!info.id.empty() && !info.type.empty() && info.seq && info.chain);
    check_rewrite(*rec);
  }
  const auto link = chain_link_problem(info, prev);
  FUZZ_CHECK(link.has_value() == (!info.chain || *info.chain != chain_next(prev, info.digest)));
  return info.chain.value_or(prev);
}

// The scan must tile [start, good_end) with its members, and stop only at
// the end of the file or with a reason.
void check_scan(const MemberScan& scan, std::string_view file, std::uint64_t start) {
  FUZZ_CHECK(scan.file_size == file.size());
  std::uint64_t at = start;
  for (const auto& m : scan.members) {
    FUZZ_CHECK(m.offset == at && m.compressed_length > 0);
    at += m.compressed_length;
  }
  FUZZ_CHECK(scan.good_end == at && at <= file.size());
  FUZZ_CHECK(scan.complete() == scan.tail_error.empty());
}

void walk(const MemberScan& scan) {
  Digest head = kZeroChain;
  for (const auto& m : scan.members) head = check_member(m, head);
}

Compression codec(std::uint8_t mode) {
  switch ((mode >> 2) & 3) {
    case 0: return Compression::stored();
    case 1: return Compression{Compression::Codec::fast, 0, 0};
    case 2: return Compression::zlib(1, 0);
    default: return Compression::zlib(9, 0);
  }
}

void records(std::uint8_t mode, std::string_view in) {
  std::string file;
  std::vector<std::string_view> parts;
  while (!in.empty()) {
    parts.push_back(take_part(in));
    FUZZ_CHECK(append_gzip_member(file, parts.back(), codec(mode)));
  }
  const MemberScan scan = scan_members(file);
  check_scan(scan, file, 0);
  FUZZ_CHECK(scan.complete() && scan.members.size() == parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i) FUZZ_CHECK(scan.members[i].data == parts[i]);
  walk(scan);
}

void segment(std::uint8_t mode, std::string_view in) {
  const std::uint64_t start = std::min<std::uint64_t>(mode >> 2, in.size());
  const MemberScan scan = scan_members(in, start);
  check_scan(scan, in, start);
  walk(scan);
}

void manifest(std::string_view in) {
  std::string why;
  const auto m = parse_manifest(in, &why);
  FUZZ_CHECK(m.has_value() == why.empty());
  if (!m) return;
  if (auto seg = parse_segment_name(m->segment)) FUZZ_CHECK(valid_writer_id(seg->writer));
  // The writer only writes format /2; what it writes must read back as it was.
  if (m->format != "sightline-archive-manifest/2") return;
  const auto again = parse_manifest(manifest_json(*m), &why);
  FUZZ_CHECK(again.has_value());
  FUZZ_CHECK(again->segment == m->segment && again->file_sha256 == m->file_sha256 &&
             again->file_size == m->file_size && again->writer == m->writer &&
             again->segment_seq == m->segment_seq && again->previous_segment == m->previous_segment &&
             again->chain_start == m->chain_start && again->chain_head == m->chain_head &&
             again->first_seq == m->first_seq && again->record_count == m->record_count &&
             again->records_file == m->records_file && again->records_sha256 == m->records_sha256 &&
             again->created == m->created && again->sealed == m->sealed &&
             again->key_fingerprint == m->key_fingerprint && again->has_shipped == m->has_shipped &&
             again->shipped_journal_bytes == m->shipped_journal_bytes &&
             again->shipped.size() == m->shipped.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t mode = data[0];
  const std::string_view in = as_text(data + 1, size - 1);
  switch (mode & 3) {
    case 0: records(mode, in); break;
    case 1: segment(mode, in); break;
    default: manifest(in); break;
  }
  return 0;
}
