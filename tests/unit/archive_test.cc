#include "archive/format.h"
#include "archive/keys.h"
#include "archive/segment.h"
#include "archive/service.h"
#include "archive/verify.h"
#include "archive/warc.h"
#include "archive_fixtures.h"

#include <doctest/doctest.h>
#include <zlib.h>

#include <sys/resource.h>
#include <sys/stat.h>

#include <map>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace sightline;
using namespace sightline::archive;
namespace fs = std::filesystem;

namespace {

using namespace archive_fixtures;

// One sealed segment: warcinfo + 10 exchanges (seq 1..31).
struct SealedArchive : Archive {
  fs::path segment;
  SealedArchive() {
    auto segs = write_sealed({}, 10);
    REQUIRE(segs.size() == 1);
    segment = segs[0];
    REQUIRE(verify().intact());
  }
};

}  // namespace

TEST_CASE("archive: digests and encodings") {
  CHECK(base32(sha256("")) == "4OYMIQUY7QOBJGX36TEJS35ZEQT24QPEMSNZGTFESWMRW6CSXBKQ====");
  CHECK(warc_digest("abc") == "sha256:XJ4BNP4PAHH6UQKBIDPF3LRCEOYAGYNDSYLXVHFUCD7WD4QACWWQ====");
  CHECK(digest_from_hex(to_hex(sha256("x"))) == sha256("x"));
  CHECK(!digest_from_hex("zz"));
  std::string id = new_record_id();
  CHECK(id.size() == 47);
  CHECK(id.starts_with("<urn:uuid:"));
  CHECK(id[24] == '4');
  CHECK(warc_date(WallClock::time_point(std::chrono::microseconds(1795741323123456))) ==
        "2026-11-27T01:02:03.123456Z");
  // Calendar arithmetic, not gmtime: a leap day, the epoch, and before it.
  CHECK(warc_date(WallClock::time_point(std::chrono::microseconds(951782400000001))) ==
        "2000-02-29T00:00:00.000001Z");
  CHECK(warc_date(WallClock::time_point{}) == "1970-01-01T00:00:00.000000Z");
  CHECK(warc_date(WallClock::time_point(std::chrono::microseconds(-1))) == "1969-12-31T23:59:59.999999Z");
}

// A damaged member may end anywhere, even inside its chain line: the digest
// is still defined (found by tests/fuzz/warc_reader_fuzz; it used to throw
// std::out_of_range out of `archive verify`).
TEST_CASE("archive: record digest of a record cut inside its chain line") {
  CHECK(record_digest("WARC/1.1\r\nWARC-Sightline-Chain: sha256:5") == sha256("WARC/1.1"));
  Member m{0, 40, "WARC/1.1\r\nWARC-Type: response\r\nWARC-Sightline-Chain: sha2"};
  CHECK(!inspect_record(m).problem.empty());
}

// Stored members are framed by hand (RFC 1952 around RFC 1951 stored
// blocks): empty, one block, several blocks; zlib must read them back.
TEST_CASE("archive: stored gzip members read back with zlib") {
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{65535}, std::size_t{65536},
                           std::size_t{200'003}}) {
    CAPTURE(size);
    std::string data(size, '\0');
    for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<char>((i * 2654435761u) >> 13);
    auto member = gzip_member(data, Compression::stored());
    REQUIRE(member);
    CHECK(member->size() == 10 + 5 * std::max<std::size_t>(1, (size + 65534) / 65535) + size + 8);
    z_stream zs{};
    REQUIRE(inflateInit2(&zs, 16 + 15) == Z_OK);
    std::string out(size + 16, '\0');
    zs.next_in = reinterpret_cast<Bytef*>(member->data());
    zs.avail_in = static_cast<uInt>(member->size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    CHECK(inflate(&zs, Z_FINISH) == Z_STREAM_END);  // also checks CRC-32 and ISIZE
    CHECK(zs.avail_in == 0);
    out.resize(zs.total_out);
    inflateEnd(&zs);
    CHECK(out == data);
  }
}

TEST_CASE("archive: http blocks") {
  exchange::Head req;
  req.method = "GET";
  req.target = "/a?b=1";
  req.version = "HTTP/2";
  req.authority = "example.com";
  req.headers = {{"accept", "*/*"}};
  std::string block = http_request_block(req, "body");
  CHECK(block == "GET /a?b=1 HTTP/2\r\nHost: example.com\r\naccept: */*\r\n\r\nbody");
  CHECK(http_payload(block) == "body");
  exchange::Head resp;
  resp.status = 404;
  resp.version = "HTTP/2";
  CHECK(http_response_block(resp, "") == "HTTP/2 404\r\n\r\n");
}

TEST_CASE("archive: round trip, digests, chain and a standard gzip reader") {
  Archive a;
  auto w = a.open();
  a.write(*w, 0, 5);
  CHECK(w->current_segment().ends_with(".warc.gz.open"));
  REQUIRE(!w->seal());
  CHECK(w->current_segment().empty());
  auto segs = a.files(".warc.gz");
  REQUIRE(segs.size() == 1);
  CHECK((fs::status(segs[0]).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::group_read));
  std::string file = read_file(segs[0]);
  MemberScan scan = scan_members(file);
  REQUIRE(scan.complete());
  REQUIRE(scan.members.size() == 16);
  Digest chain = kZeroChain;
  std::vector<std::string> types;
  std::string request_id;
  for (std::size_t i = 0; i < scan.members.size(); ++i) {
    const Member& m = scan.members[i];
    auto rec = parse_record(m.data, nullptr);
    REQUIRE(rec);
    types.push_back(*rec->header("WARC-Type"));
    CHECK(*rec->header("WARC-Block-Digest") == warc_digest(rec->block));
    CHECK(*rec->header(kSeqHeader) == std::to_string(i + 1));
    RecordInfo info = inspect_record(m);
    CHECK(info.problem.empty());
    CHECK(!chain_link_problem(info, chain));
    chain = *info.chain;
    if (types.back() == "request") {
      request_id = *rec->header("WARC-Record-ID");
      CHECK(*rec->header("Content-Type") == "application/http; msgtype=request");
      CHECK(*rec->header("WARC-Payload-Digest") == warc_digest(http_payload(rec->block)));
      int n = static_cast<int>(i / 3);
      CHECK((rec->header("WARC-Truncated") != nullptr) == (n % 2 == 1));
      CHECK(http_payload(rec->block).starts_with("amount=" + std::to_string(n)));
    } else if (types.back() != "warcinfo") {
      CHECK(*rec->header("WARC-Concurrent-To") == request_id);
    }
  }
  CHECK(types[0] == "warcinfo");
  CHECK(types[1] == "request");
  CHECK(types[2] == "response");
  CHECK(types[3] == "metadata");
  CHECK(chain == w->chain_head());
  CHECK(w->next_record_seq() == 17);

  std::string err;
  const std::string manifest_text = read_file(segs[0].string() + ".manifest.json");
  auto manifest = parse_manifest(manifest_text, &err);
  REQUIRE_MESSAGE(manifest, err);
  // Format /2: the manifest counts the records and seals the records file.
  CHECK(manifest->format == "sightline-archive-manifest/2");
  CHECK(manifest->records.empty());
  CHECK(manifest->record_count == 16);
  CHECK(manifest->first_seq == 1);
  CHECK(manifest->records_file == segs[0].filename().string() + ".records.tsv");
  CHECK(manifest->records_sha256 == to_hex(sha256(read_file(segs[0].string() + ".records.tsv"))));
  REQUIRE_MESSAGE(load_records(a.dir.string(), *manifest, &err), err);
  REQUIRE(manifest->records.size() == 16);
  // Records carry no chain value in the records file; loading derives it.
  for (std::size_t i = 0; i < scan.members.size(); ++i)
    CHECK(manifest->records[i].chain == *inspect_record(scan.members[i]).chain);
  CHECK(manifest->chain_head == chain);
  CHECK(manifest->file_sha256 == to_hex(sha256(file)));
  CHECK(manifest->key_fingerprint == key_fingerprint(a.verify_key.get()));
  Report r = a.verify();
  expect_intact(r);
  CHECK(r.segments == 1);
  CHECK(r.records == 16);

  // Python's gzip module (what WARC tools build on) reads every member.
  std::string cmd = "python3 -c \"import gzip,sys; d=gzip.open(sys.argv[1]).read(); "
                    "sys.exit(0 if d.startswith(b'WARC/1.1') and d.count(b'WARC/1.1\\r\\n')==16 else 1)\" " +
                    segs[0].string();
  CHECK(std::system(cmd.c_str()) == 0);
}

TEST_CASE("archive: rotation by size and age; the chain runs across segments and restarts") {
  Archive a;
  WriterOptions opts = small_segments();
  auto segs = a.write_sealed(opts, 12);
  CHECK(segs.size() > 2);
  for (const auto& s : segs) CHECK(fs::file_size(s) <= 2000 + 1200);  // one exchange may overshoot
  RecoveryReport rep;
  {
    auto w = a.open(opts, &rep);
    CHECK(rep.open_segment.empty());
    CHECK(rep.resumed_from == segs.back().filename().string() + ".manifest.json");
    CHECK(rep.next_record_seq == w->next_record_seq());
    a.write(*w, 12, 13);
    CHECK(!w->maybe_rotate(WallClock::now()));
    CHECK(!w->current_segment().empty());
    CHECK(!w->maybe_rotate(WallClock::now() + std::chrono::hours(2)));
    CHECK(w->current_segment().empty());
  }
  CHECK(a.files(".warc.gz").size() == segs.size() + 1);
  expect_intact(a.verify());
}

TEST_CASE("archive: several exchanges in one write, rotating by size in between") {
  Archive one_by_one, batched;
  WriterOptions opts = small_segments();
  auto segs = one_by_one.write_sealed(opts, 12);
  std::vector<ExchangeRecord> exs;
  for (int i = 0; i < 12; ++i) exs.push_back(sample_exchange(i));
  std::vector<const ExchangeRecord*> ptrs;
  for (const auto& ex : exs) ptrs.push_back(&ex);
  auto w = batched.open(opts);
  SegmentWriter::AppendResult res = w->append_all(ptrs);
  CHECK_FALSE(res.error);
  CHECK(res.written == 12);
  CHECK(w->next_record_seq() == 1 + 12 * 3 + segs.size());  // a warcinfo record per segment
  REQUIRE(!w->seal());
  // The same segment boundaries as one exchange at a time.
  auto batched_segs = batched.files(".warc.gz");
  REQUIRE(batched_segs.size() == segs.size());
  for (std::size_t i = 0; i < segs.size(); ++i) {
    CAPTURE(i);
    CHECK(scan_members(read_file(batched_segs[i])).members.size() ==
          scan_members(read_file(segs[i])).members.size());
  }
  Report r = batched.verify();
  expect_intact(r);
  CHECK(r.records == 12 * 3 + segs.size());
}

TEST_CASE("archive: interval sync and an open segment verify as unsealed") {
  Archive a;
  WriterOptions opts;
  opts.sync = SyncMode::interval;
  opts.sync_interval = std::chrono::milliseconds(10);
  auto w = a.open(opts);
  a.write(*w, 0, 3);
  CHECK(!w->maybe_sync(WallClock::now() + std::chrono::seconds(1)));
  CHECK(!w->sync());
  Report r = a.verify();
  expect_intact(r);
  REQUIRE(r.findings.size() == 1);
  CHECK(r.findings[0].kind == FindingKind::unsealed);
}

TEST_CASE("archive tamper: a body byte changed (member recompressed)") {
  SealedArchive a;
  auto parts = members_of(read_file(a.segment));
  std::string data = scan_members(parts[5]).members[0].data;  // seq 6: response of exchange 1
  auto at = data.find("accepted 1");
  REQUIRE(at != std::string::npos);
  data[at] = 'A';
  parts[5] = *gzip_member(data);
  write_file(a.segment, join(parts));
  expect_single(a.verify(), FindingKind::modified, 6);
}

TEST_CASE("archive tamper: a body changed with its block and payload digests recomputed") {
  // The record digest covers the header only; a forger who also rewrites the
  // header's digests to match the new body still changes the record digest,
  // which the chain and the signed manifest fix.
  SealedArchive a;
  auto parts = members_of(read_file(a.segment));
  std::string data = scan_members(parts[5]).members[0].data;  // seq 6: response of exchange 1
  auto rec = parse_record(data, nullptr);
  REQUIRE(rec);
  std::string block(rec->block);
  auto at = block.find("accepted 1");
  REQUIRE(at != std::string::npos);
  block[at] = 'A';
  auto replace_field = [&](const std::string& name, const std::string& value) {
    const std::string& old = *rec->header(name);
    auto pos = data.find(name + ": " + old);
    REQUIRE(pos != std::string::npos);
    data.replace(pos + name.size() + 2, old.size(), value);
  };
  replace_field("WARC-Block-Digest", warc_digest(block));
  replace_field("WARC-Payload-Digest", warc_digest(http_payload(block)));
  data.replace(data.size() - 4 - block.size(), block.size(), block);  // the block ends before CRLFCRLF
  REQUIRE(inspect_record(Member{0, 0, data}).problem.empty());  // self-consistent on its own
  parts[5] = *gzip_member(data);
  write_file(a.segment, join(parts));
  expect_single(a.verify(), FindingKind::modified, 6);
}

TEST_CASE("archive tamper: a record deleted") {
  SealedArchive a;
  auto parts = members_of(read_file(a.segment));
  parts.erase(parts.begin() + 4);
  write_file(a.segment, join(parts));
  expect_single(a.verify(), FindingKind::deleted, 5);
}

TEST_CASE("archive tamper: two records swapped") {
  SealedArchive a;
  auto parts = members_of(read_file(a.segment));
  std::swap(parts[3], parts[4]);
  write_file(a.segment, join(parts));
  Report r = a.verify();
  expect_single(r, FindingKind::reordered);
  auto it = std::find_if(r.findings.begin(), r.findings.end(), [](const Finding& f) { return f.problem(); });
  CHECK((it->seq == 4u || it->seq == 5u));
}

TEST_CASE("archive tamper: a forged record inserted with a valid-looking chain") {
  SealedArchive a;
  auto parts = members_of(read_file(a.segment));
  // The attacker chains the forgery from the record before it, as the writer would.
  RecordInfo before = inspect_record(scan_members(parts[6]).members[0]);
  WarcRecord forged;
  forged.block = "GET /forged HTTP/1.1\r\nHost: bank.example\r\n\r\n";
  forged.headers = {{"WARC-Type", "request"},
                    {"WARC-Record-ID", new_record_id()},
                    {"WARC-Date", warc_date(WallClock::now())},
                    {"Content-Type", "application/http; msgtype=request"},
                    {"WARC-Block-Digest", warc_digest(forged.block)},
                    {std::string(kSeqHeader), "8"}};
  std::string unchained = serialize_unchained(forged);
  parts.insert(parts.begin() + 7, *gzip_member(add_chain_header(unchained, chain_next(*before.chain, record_digest(unchained)))));
  write_file(a.segment, join(parts));
  expect_single(a.verify(), FindingKind::inserted, 8);
}

TEST_CASE("archive tamper: the segment truncated or bytes appended") {
  SealedArchive a;
  std::string file = read_file(a.segment);
  SUBCASE("truncated") {
    write_file(a.segment, file.substr(0, file.size() - 30));
    expect_single(a.verify(), FindingKind::truncated);
  }
  SUBCASE("garbage appended") {
    write_file(a.segment, file + "garbage");
    expect_single(a.verify(), FindingKind::inserted);
  }
  SUBCASE("compressed bytes of one record corrupted") {
    auto parts = members_of(file);
    parts[2][parts[2].size() / 2] ^= 0x55;
    write_file(a.segment, join(parts));
    expect_single(a.verify(), FindingKind::modified, 3);
  }
}

TEST_CASE("archive tamper: manifest edited, signature replaced or missing") {
  SealedArchive a;
  fs::path manifest = a.segment.string() + ".manifest.json";
  fs::path sig = a.segment.string() + ".manifest.json.sig";
  SUBCASE("manifest edited") {
    std::string text = read_file(manifest);
    auto at = text.find("\"record_count\": 31,");
    REQUIRE(at != std::string::npos);
    text.replace(at, 19, "\"record_count\": 30,");
    write_file(manifest, text);
    expect_single(a.verify(), FindingKind::bad_signature);
  }
  // The records file is sealed by its SHA-256 in the signed manifest.
  fs::path records = a.segment.string() + ".records.tsv";
  SUBCASE("records file edited") {
    std::string text = read_file(records);
    auto at = text.find("\n5\t");
    REQUIRE(at != std::string::npos);
    text[at + 1] = '6';
    write_file(records, text);
    Report r = a.verify();
    expect_single(r, FindingKind::bad_manifest);
    CHECK(r.findings[0].detail.find("modified") != std::string::npos);
  }
  SUBCASE("records file removed") {
    fs::remove(records);
    Report r = a.verify();
    expect_single(r, FindingKind::bad_manifest);
    CHECK(r.findings[0].detail.find("unreadable") != std::string::npos);
  }
  SUBCASE("signature by another key") {
    TempDir other;
    std::string err;
    std::string other_key = (other.path / "k").string();
    REQUIRE(keygen(other_key, &err));
    auto sig_text = sign_base64(load_signing_key(other_key, &err).get(), read_file(manifest), &err);
    REQUIRE(sig_text);
    write_file(sig, *sig_text + "\n");
    expect_single(a.verify(), FindingKind::bad_signature);
  }
  SUBCASE("signature removed") {
    fs::remove(sig);
    expect_single(a.verify(), FindingKind::bad_signature);
  }
  SUBCASE("manifest removed") {
    fs::remove(manifest);
    fs::remove(sig);
    expect_single(a.verify(), FindingKind::missing_manifest);
  }
}

// Segments sealed before the records file (manifest format /1, records
// listed inline) still verify, and tampering with them is still named.
TEST_CASE("archive: format /1 manifests (records listed inline) still verify") {
  SealedArchive a;
  fs::path manifest = a.segment.string() + ".manifest.json";
  std::string err;
  auto m = parse_manifest(read_file(manifest), &err);
  REQUIRE_MESSAGE(m, err);
  REQUIRE(load_records(a.dir.string(), *m, &err));
  // The /1 layout: the same fields, and the records as a JSON array.
  nlohmann::ordered_json j = {
      {"format", "sightline-archive-manifest/1"}, {"segment", m->segment},
      {"sha256", m->file_sha256},                  {"size", m->file_size},
      {"writer", m->writer},                       {"segment_seq", m->segment_seq},
      {"previous_segment", nullptr},               {"chain_start", sha256_field(m->chain_start)},
      {"chain_head", sha256_field(m->chain_head)}, {"created", m->created},
      {"sealed", m->sealed},                       {"key_fingerprint", m->key_fingerprint},
  };
  j["records"] = nlohmann::ordered_json::array();
  for (const auto& r : m->records)
    j["records"].push_back({{"seq", r.seq}, {"offset", r.offset}, {"length", r.length}, {"id", r.id},
                            {"type", r.type}, {"digest", sha256_field(r.digest)}});
  std::string text = j.dump(1) + "\n";
  write_file(manifest, text);
  auto sig = sign_base64(load_signing_key(a.key.string(), &err).get(), text, &err);
  REQUIRE(sig);
  write_file(a.segment.string() + ".manifest.json.sig", *sig + "\n");
  fs::remove(a.segment.string() + ".records.tsv");
  auto v1 = parse_manifest(text, &err);
  REQUIRE_MESSAGE(v1, err);
  CHECK(v1->record_count == 31);
  CHECK(v1->first_seq == 1);
  CHECK(v1->records.size() == 31);
  expect_intact(a.verify());
  // Tampering is still found against the inline list.
  auto parts = members_of(read_file(a.segment));
  parts.erase(parts.begin() + 4);
  write_file(a.segment, join(parts));
  expect_single(a.verify(), FindingKind::deleted, 5);
}

TEST_CASE("archive tamper: a sealed segment deleted") {
  Archive a;
  WriterOptions opts = small_segments();
  auto segs = a.write_sealed(opts, 12);
  REQUIRE(segs.size() >= 3);
  REQUIRE(a.verify().intact());
  const fs::path& middle = segs[1];
  SUBCASE("with its manifest") {
    fs::remove(middle);
    fs::remove(middle.string() + ".manifest.json");
    fs::remove(middle.string() + ".manifest.json.sig");
    Report r = a.verify();
    expect_single(r, FindingKind::segment_deleted);
    CHECK(r.findings[0].detail.find("segment 2 ") != std::string::npos);
  }
  SUBCASE("file only") {
    fs::remove(middle);
    expect_single(a.verify(), FindingKind::segment_deleted);
  }
  SUBCASE("the first one") {
    fs::remove(segs[0]);
    fs::remove(segs[0].string() + ".manifest.json");
    fs::remove(segs[0].string() + ".manifest.json.sig");
    expect_single(a.verify(), FindingKind::segment_deleted);
  }
}

TEST_CASE("archive crash recovery: torn tails are cut and the chain continues") {
  Archive a;
  WriterOptions opts;
  opts.sync = SyncMode::none;
  fs::path open_file;
  std::vector<Member> members;
  {
    auto w = a.open(opts);
    a.write(*w, 0, 4);
    open_file = a.dir / w->current_segment();
    // No seal: the writer "dies" here.
  }
  std::string file = read_file(open_file);
  members = scan_members(file).members;
  REQUIRE(members.size() == 13);
  const Member& last = members.back();

  struct Case {
    const char* name;
    std::string bytes;
    std::uint64_t kept_records;
    std::uint64_t cut_bytes;
  };
  std::vector<Case> cases = {
      {"mid last member", file.substr(0, last.offset + 10), 12, 10},
      {"one byte short", file.substr(0, file.size() - 1), 12, last.compressed_length - 1},
      {"mid earlier member", file.substr(0, members[5].offset + members[5].compressed_length / 2), 5,
       members[5].compressed_length / 2},
      {"at a member boundary", file.substr(0, members[7].offset), 7, 0},
      {"garbage appended", file + std::string(100, '\x1f'), 13, 100},
      {"inside the warcinfo", file.substr(0, 20), 0, 20},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    TempDir scratch;
    fs::copy(a.dir, scratch.path / "archive");
    fs::path dir = scratch.path / "archive";
    write_file(dir / open_file.filename(), c.bytes);
    RecoveryReport rep;
    WriterOptions o = opts;
    o.dir = dir.string();
    o.writer_id = "w1";
    std::string err;
    auto w = SegmentWriter::open(o, load_signing_key(a.key.string(), &err), &rep, &err);
    REQUIRE_MESSAGE(w, err);
    CHECK(rep.open_segment == open_file.filename().string());
    CHECK(rep.kept_records == c.kept_records);
    CHECK(rep.cut_bytes == c.cut_bytes);
    CHECK(rep.sealed == (c.kept_records > 0));
    CHECK(rep.removed == (c.kept_records == 0));
    CHECK(rep.next_record_seq == c.kept_records + 1);
    CHECK(!w->append(sample_exchange(99)));
    CHECK(!w->seal());
    std::string verr;
    auto r = verify_archive(dir.string(), a.verify_key.get(), &verr);
    REQUIRE(r);
    expect_intact(*r);
    CHECK(r->records == c.kept_records + 4);
  }
}

TEST_CASE("archive crash recovery: a seal interrupted after the manifest was written") {
  Archive a;
  fs::path open_file;
  {
    auto w = a.open();
    a.write(*w, 0, 2);
    open_file = a.dir / w->current_segment();
  }
  std::string sealed = open_file.string().substr(0, open_file.string().size() - 5);
  write_file(sealed + ".manifest.json", "{\"stale\": true}");
  write_file(sealed + ".records.tsv", "stale");
  RecoveryReport rep;
  auto w = a.open({}, &rep);
  CHECK(rep.sealed);
  CHECK(rep.cut_bytes == 0);
  a.write(*w, 2, 3);
  REQUIRE(!w->seal());
  expect_intact(a.verify());
}

TEST_CASE("archive: a failed write is cut off and the writer recovers") {
  Archive a;
  WriterOptions opts;
  opts.sync = SyncMode::record;
  auto w = a.open(opts);
  a.write(*w, 0, 2);
  std::uintmax_t size = fs::file_size(a.dir / w->current_segment());
  // A file size limit stands in for a full disk (root ignores permissions).
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit old_limit{};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
  rlimit limit = old_limit;
  limit.rlim_cur = size + 100;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &limit) == 0);
  auto e1 = w->append(sample_exchange(2, 4000));
  auto e2 = w->append(sample_exchange(3, 4000));
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &old_limit) == 0);
  std::signal(SIGXFSZ, old_handler);
  CHECK(e1);
  CHECK(e2);
  CHECK(fs::file_size(a.dir / w->current_segment()) == size);
  CHECK(w->next_record_seq() == 8);
  a.write(*w, 4, 6);
  REQUIRE(!w->seal());
  Report r = a.verify();
  expect_intact(r);
  CHECK(r.records == 13);
}

TEST_CASE("archive keys: keygen, modes, loading, no overwrite") {
  TempDir tmp;
  std::string path = (tmp.path / "k.pem").string();
  std::string err;
  REQUIRE_MESSAGE(keygen(path, &err), err);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(fs::exists(path + ".pub"));
  CHECK(!keygen(path, &err));
  CHECK(err.find("exists") != std::string::npos);
  auto priv = load_signing_key(path, &err);
  auto pub = load_verify_key(path + ".pub", &err);
  auto pub_from_priv = load_verify_key(path, &err);
  REQUIRE(priv);
  REQUIRE(pub);
  REQUIRE(pub_from_priv);
  CHECK(key_fingerprint(priv.get()) == key_fingerprint(pub.get()));
  CHECK(key_fingerprint(pub.get()).size() == 64);
  CHECK(!load_signing_key(path + ".pub", &err));
  auto sig = sign_base64(priv.get(), "hello", &err);
  REQUIRE(sig);
  CHECK(verify_base64(pub.get(), "hello", *sig));
  CHECK(verify_base64(pub_from_priv.get(), "hello", *sig));
  CHECK(!verify_base64(pub.get(), "hellO", *sig));
}

TEST_CASE("archive: segment names") {
  auto t = WallClock::time_point(std::chrono::seconds(1795741323));
  std::string n = segment_name("proxy1.w0", t, 7);
  CHECK(n == "proxy1.w0-20261127T010203Z-000007.warc.gz");
  auto p = parse_segment_name(n + ".open");
  REQUIRE(p);
  CHECK(p->open);
  CHECK(p->writer == "proxy1.w0");
  CHECK(p->seq == 7);
  CHECK(p->sealed_name == n);
  CHECK(!parse_segment_name("x.warc.gz"));
  CHECK(!valid_writer_id("a-b"));
  CHECK(parse_sync_mode("interval") == SyncMode::interval);
  CHECK(!parse_sync_mode("always"));
  CHECK(!valid_writer_id(""));
}

// --- the writer thread of the running proxy (service.h) ---

namespace {

template <typename Pred>
bool eventually(Pred pred, std::chrono::seconds limit = std::chrono::seconds(20)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

std::unique_ptr<ArchiveService> start_service(Archive& a, ServiceOptions opts) {
  opts.writer.dir = a.dir.string();
  opts.writer.writer_id = "svc";
  std::string err;
  auto svc = ArchiveService::start(opts, load_signing_key(a.key.string(), &err), &err);
  REQUIRE_MESSAGE(svc, err);
  return svc;
}

// A file size limit stands in for a full disk (root ignores permissions);
// the limit is per process, so it applies to the writer thread too.
struct FileSizeLimit {
  rlimit old{};
  void (*old_handler)(int) = nullptr;
  bool active = true;
  explicit FileSizeLimit(rlim_t bytes) {
    old_handler = std::signal(SIGXFSZ, SIG_IGN);
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    rlimit l = old;
    l.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &l) == 0);
  }
  void lift() {
    if (!active) return;
    active = false;
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
  }
  ~FileSizeLimit() { lift(); }
};

}  // namespace

TEST_CASE("archive service: every submitted exchange is written, sealed on stop, and verifies") {
  Archive a;
  for (SyncMode mode : {SyncMode::record, SyncMode::interval, SyncMode::none}) {
    CAPTURE(static_cast<int>(mode));
    ServiceOptions opts;
    opts.writer.sync = mode;
    opts.writer.sync_interval = std::chrono::milliseconds(10);
    auto svc = start_service(a, opts);
    for (int i = 0; i < 300; ++i) svc->submit(sample_exchange(i));
    svc->stop();
    CHECK(svc->stats().written == 300);
    CHECK(svc->stats().queued == 0);
    CHECK(svc->stats().queued_bytes == 0);
    CHECK(svc->stats().dropped == 0);
  }
  Report r = a.verify();
  expect_intact(r);
  CHECK(r.records == 3 * (300 * 3 + 1));  // three runs: 3 records per exchange + a warcinfo each
}

TEST_CASE("archive service: what a submitter allocated is released on its own thread, after the write") {
  // Records whose destruction notes the thread it happens on.
  struct Captured {
    std::atomic<int>* destroyed;
    std::thread::id* where;
    std::mutex* mu;
    ~Captured() {
      std::lock_guard lock(*mu);
      *where = std::this_thread::get_id();
      destroyed->fetch_add(1);
    }
  };
  Archive a;
  auto svc = start_service(a, ServiceOptions{});
  std::atomic<int> destroyed{0};
  std::thread::id where;
  std::mutex mu;
  std::thread::id submitter;
  std::thread worker([&] {
    submitter = std::this_thread::get_id();
    for (int i = 0; i < 3; ++i) {
      auto keep = std::make_shared<Captured>(&destroyed, &where, &mu);
      svc->submit([i] { return sample_exchange(i); }, 1000, keep);
      keep.reset();
      REQUIRE(eventually([&] { return svc->stats().written == static_cast<std::uint64_t>(i + 1); }));
      // Written, but still held for this thread: released at its next submit.
      CHECK(destroyed.load() == i);
    }
  });
  worker.join();
  CHECK(destroyed.load() == 3);  // the last one when the thread ended, still on that thread
  {
    std::lock_guard lock(mu);
    CHECK(where == submitter);
  }
  svc->stop();
  expect_intact(a.verify());
}

TEST_CASE("archive service: a full queue holds connections back until it drains below the resume mark") {
  Archive a;
  ServiceOptions opts;
  opts.queue_bytes = 64 * 1024;
  auto svc = start_service(a, opts);
  // The first exchange's build blocks the writer thread until released.
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  svc->submit(
      [&] {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return release; });
        return sample_exchange(0);
      },
      1000);
  for (int i = 1; i <= 40; ++i) svc->submit(sample_exchange(i, 4000));
  CHECK(svc->over_limit());
  std::atomic<int> drained{0};
  svc->when_drained([&] { drained.fetch_add(1); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(drained == 0);  // the writer is stuck: nobody may resume
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  REQUIRE(eventually([&] { return drained.load() == 1; }));
  CHECK_FALSE(svc->over_limit());
  // Below the limit already: at once, on the caller's thread.
  REQUIRE(eventually([&] { return svc->stats().queued == 0; }));
  svc->when_drained([&] { drained.fetch_add(1); });
  CHECK(drained == 2);
  svc->stop();
  CHECK(svc->stats().written == 41);
  expect_intact(a.verify());
}

TEST_CASE("archive service: fail closed keeps the exchange and retries; fail open drops and counts") {
  Archive a;
  SUBCASE("closed") {
    ServiceOptions opts;
    opts.retry_interval = std::chrono::milliseconds(20);
    auto svc = start_service(a, opts);
    svc->submit(sample_exchange(0));
    REQUIRE(eventually([&] { return svc->stats().written == 1; }));
    FileSizeLimit limit(1);  // nothing more fits
    svc->submit(sample_exchange(1, 20000));
    REQUIRE(eventually([&] { return svc->failing(); }));
    CHECK(svc->failure().size() > 0);
    CHECK(svc->stats().queued == 1);  // kept for the next attempt
    CHECK(svc->stats().dropped == 0);
    limit.lift();
    bool ok = eventually([&] { return svc->stats().written == 2; }, std::chrono::seconds(3));
    INFO(svc->failure());
    REQUIRE(ok);
    CHECK_FALSE(svc->failing());
    CHECK(svc->stats().failures >= 1);
    svc->stop();
  }
  SUBCASE("open") {
    ServiceOptions opts;
    opts.fail_open = true;
    auto svc = start_service(a, opts);
    svc->submit(sample_exchange(0));
    REQUIRE(eventually([&] { return svc->stats().written == 1; }));
    FileSizeLimit limit(1);
    svc->submit(sample_exchange(1, 20000));
    REQUIRE(eventually([&] { return svc->stats().dropped == 1; }));
    CHECK(svc->failing());
    limit.lift();
    svc->submit(sample_exchange(2));
    REQUIRE(eventually([&] { return svc->stats().written == 2; }));
    CHECK_FALSE(svc->failing());
    svc->stop();
  }
  expect_intact(a.verify());
}

TEST_CASE("archive: bodies already compressed are stored in their member, not deflated again") {
  auto head = [](std::vector<exchange::Header> h) {
    exchange::Head r;
    r.status = 200;
    r.headers = std::move(h);
    return r;
  };
  CHECK(body_incompressible(head({{"Content-Encoding", "gzip"}})));
  CHECK(body_incompressible(head({{"content-encoding", "br"}})));
  CHECK_FALSE(body_incompressible(head({{"Content-Encoding", "identity"}})));
  CHECK(body_incompressible(head({{"Content-Type", "image/png"}})));
  CHECK(body_incompressible(head({{"Content-Type", "Application/Octet-Stream; x=y"}})));
  CHECK(body_incompressible(head({{"Content-Type", "video/mp4"}})));
  CHECK_FALSE(body_incompressible(head({{"Content-Type", "image/svg+xml"}})));
  CHECK_FALSE(body_incompressible(head({{"Content-Type", "text/html; charset=utf-8"}})));
  CHECK_FALSE(body_incompressible(head({{"Content-Type", "application/json"}})));
  CHECK_FALSE(body_incompressible(head({})));

  Archive a;
  auto w = a.open();
  ExchangeRecord deflated = sample_exchange(1, 20000);  // 20 kB of 'x': compresses to almost nothing
  ExchangeRecord stored = sample_exchange(2, 20000);
  stored.request_store = true;
  REQUIRE(!w->append(deflated));
  REQUIRE(!w->append(stored));
  REQUIRE(!w->seal());
  auto segs = a.files(".warc.gz");
  REQUIRE(segs.size() == 1);
  std::string file = read_file(segs[0]);
  MemberScan scan = scan_members(file);
  REQUIRE(scan.complete());
  // warcinfo, then request/response/metadata per exchange.
  REQUIRE(scan.members.size() == 7);
  const Member& req1 = scan.members[1];
  const Member& req2 = scan.members[4];
  CHECK(req1.compressed_length < req1.data.size() / 10);
  CHECK(req2.compressed_length > req2.data.size());  // stored: the record plus the gzip framing
  expect_intact(a.verify());
}

TEST_CASE("archive: records under compress_min_bytes are stored, larger ones deflated") {
  // sample_exchange(i, 40): every record well under 2 KiB; (i, 20000): a
  // request record of 20 kB of 'x'.
  auto members = [](Compression how) {
    Archive a;
    WriterOptions opts;
    opts.compression = how;
    auto w = a.open(opts);
    REQUIRE(!w->append(sample_exchange(1)));
    REQUIRE(!w->append(sample_exchange(2, 20000)));
    REQUIRE(!w->seal());
    expect_intact(a.verify());
    auto segs = a.files(".warc.gz");
    REQUIRE(segs.size() == 1);
    MemberScan scan = scan_members(read_file(segs[0]));
    REQUIRE(scan.complete());
    REQUIRE(scan.members.size() == 7);  // warcinfo, then request/response/metadata per exchange
    return scan.members;
  };
  auto stored = [](const Member& m) { return m.compressed_length > m.data.size(); };  // data plus framing
  for (Compression how : {Compression{}, Compression::zlib(6)}) {
    CAPTURE(how.level);
    REQUIRE(how.min_bytes == 2048);  // the default, as in the config
    auto m = members(how);
    for (std::size_t i : {0, 1, 2, 3, 5, 6}) {
      CAPTURE(i);
      CHECK(m[i].data.size() < 2048);
      CHECK(stored(m[i]));
    }
    CHECK(m[4].data.size() > 20000);
    CHECK(m[4].compressed_length < m[4].data.size() / 10);
  }
  // 0: every record goes through the codec, small ones included.
  Compression always;
  always.min_bytes = 0;
  auto m = members(always);
  CHECK_FALSE(stored(m[1]));
  CHECK_FALSE(stored(m[0]));  // warcinfo
}

TEST_CASE("archive: every compression setting writes standard gzip members that verify") {
  // Text that compresses, unlike the random ids and digests around it.
  std::string html;
  while (html.size() < 6000) html += "<tr><td>Transfer " + std::to_string(html.size()) + "</td><td>EUR</td></tr>\n";
  struct Case {
    const char* name;
    Compression how;
  };
  std::map<std::string, std::uintmax_t> sizes;
  for (const Case& c : {Case{"fast", Compression{}}, Case{"stored", Compression::stored()},
                        Case{"zlib1", Compression::zlib(1)}, Case{"zlib9", Compression::zlib(9)}}) {
    const std::string name = c.name;
    CAPTURE(name);
    Archive a;
    WriterOptions opts;
    opts.compression = c.how;
    auto w = a.open(opts);
    for (int i = 0; i < 4; ++i) {
      ExchangeRecord ex = sample_exchange(i);
      ex.response_http = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + html;
      REQUIRE(!w->append(ex));
    }
    REQUIRE(!w->seal());
    auto segs = a.files(".warc.gz");
    REQUIRE(segs.size() == 1);
    expect_intact(a.verify());
    // What WARC tools build on reads every member, and finds the body whole.
    std::string cmd = "python3 -c \"import gzip,sys; d=gzip.open(sys.argv[1]).read(); "
                      "sys.exit(0 if d.count(b'WARC/1.1\\r\\n')==13 and d.count(b'<tr><td>Transfer 0</td>')==4 else 1)\" " +
                      segs[0].string();
    CHECK(std::system(cmd.c_str()) == 0);
    sizes[c.name] = fs::file_size(segs[0]);
  }
  CHECK(sizes["fast"] < sizes["stored"] / 2);
  CHECK(sizes["zlib1"] < sizes["fast"]);
  CHECK(sizes["zlib9"] <= sizes["zlib1"]);
}
