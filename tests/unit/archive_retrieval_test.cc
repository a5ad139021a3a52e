// Search, show, export, retention and legal hold on archives written by
// SegmentWriter (docs/archive.md).
#include "archive/export.h"
#include "archive/index.h"
#include "archive/retention.h"
#include "archive_fixtures.h"

#include <doctest/doctest.h>

#include <set>

using namespace archive_fixtures;

namespace {

using namespace std::chrono_literals;

const WallClock::time_point kDay0 = WallClock::time_point(std::chrono::seconds(1795737600));  // 2026-11-27T00:00:00Z

// Exchange i: users alternate alice/bob (exchange 7 is carol's), hosts cycle
// over bank.example, api.bank.example and other.example, every third
// response is a 404, one hour apart from kDay0.
ExchangeRecord varied_exchange(int i) {
  static const char* hosts[] = {"bank.example", "api.bank.example", "other.example"};
  std::string host = hosts[i % 3];
  exchange::Head req;
  req.method = i % 2 ? "GET" : "POST";
  req.target = "/item/" + std::to_string(i);
  req.version = "HTTP/1.1";
  req.headers = {{"Host", host}};
  exchange::Head resp;
  resp.status = i % 3 == 2 ? 404 : 200;
  resp.version = "HTTP/1.1";
  resp.reason = i % 3 == 2 ? "Not Found" : "OK";
  ExchangeRecord ex;
  ex.target_uri = "https://" + host + "/item/" + std::to_string(i);
  ex.request_http = http_request_block(req, i == 4 ? "iban=DE89370400440532013000" : "q=" + std::to_string(i));
  std::string body = i == 5 ? std::string("\x89PNG\r\n\x1a\n\x00\x01", 10) : "Result " + std::to_string(i);
  ex.response_http = http_response_block(resp, body);
  std::string user = i == 7 ? "carol" : i % 2 ? "bob" : "alice";
  ex.metadata_json = nlohmann::json({{"user", user}, {"client", "10.0.0." + std::to_string(i) + ":40000"}, {"rule", "all"}}).dump();
  ex.timestamp = kDay0 + std::chrono::hours(i);
  return ex;
}

struct RetrievalArchive : Archive {
  std::vector<fs::path> segs;
  tls::EvpPkeyPtr signing_key;
  explicit RetrievalArchive(int exchanges = 12) {
    auto w = open(small_segments());
    for (int i = 0; i < exchanges; ++i) {
      auto e = w->append(varied_exchange(i));
      REQUIRE_MESSAGE(!e, *e);
    }
    REQUIRE(!w->seal());
    segs = files(".warc.gz");
    std::string err;
    signing_key = load_signing_key(key.string(), &err);
    REQUIRE(signing_key);
  }

  std::vector<std::string> targets(const Filter& f) {
    std::string err;
    auto r = search(dir.string(), f, &err);
    REQUIRE_MESSAGE(r, err);
    std::vector<std::string> out;
    for (const auto& h : r->hits) out.push_back(h.entry.target.substr(h.entry.target.rfind('/') + 1));
    return out;
  }

  // Sets a segment's sealed time back and signs its manifest again, as if
  // it had been sealed that long ago.
  void backdate(const fs::path& segment, std::chrono::hours age) {
    std::string mpath = segment.string() + ".manifest.json";
    auto m = parse_manifest(read_file(mpath), nullptr);
    REQUIRE(m);
    m->sealed = warc_date(WallClock::now() - age);
    std::string text = manifest_json(*m);
    std::string err;
    auto sig = sign_base64(signing_key.get(), text, &err);
    REQUIRE(sig);
    write_file(mpath, text);
    write_file(segment.string() + ".manifest.json.sig", *sig + "\n");
  }

  PruneResult prune_now(unsigned days, bool dry_run = false) {
    PruneOptions o;
    o.dir = dir.string();
    o.retention_days = days;
    o.dry_run = dry_run;
    o.signing_key = signing_key.get();
    std::string err;
    auto r = prune(o, &err);
    REQUIRE_MESSAGE(r, err);
    return *r;
  }

  std::string segment_of(const std::string& user) {
    Filter f;
    f.user = user;
    std::string err;
    auto r = search(dir.string(), f, &err);
    REQUIRE(r);
    REQUIRE(r->hits.size() == 1);
    return r->hits[0].file;
  }
};

using Targets = std::vector<std::string>;

std::size_t count_kind(const Report& r, FindingKind k) {
  return static_cast<std::size_t>(std::count_if(r.findings.begin(), r.findings.end(), [&](auto& f) { return f.kind == k; }));
}

}  // namespace

TEST_CASE("archive search: times, hosts and the index's own parts") {
  CHECK(parse_time("2026-11-27T00:00:00Z") == std::int64_t{1795737600} * 1000000);
  CHECK(parse_time("2026-11-27T01:00:00.5+01:00") == std::int64_t{1795737600} * 1000000 + 500000);
  CHECK(parse_time("2026-11-27") == std::int64_t{1795737600} * 1000000);
  CHECK(parse_time("2026-11-27", true) == std::int64_t{1795737600 + 86400} * 1000000);
  CHECK(!parse_time("2026-13-01"));
  CHECK(!parse_time("yesterday"));
  CHECK(!parse_time("2026-11-27T10:00:00"));  // no zone: ambiguous
  CHECK(host_matches("api.bank.example", "bank.example"));
  CHECK(host_matches("BANK.example", "bank.example."));
  CHECK(!host_matches("evilbank.example", "bank.example"));
  CHECK(printable_text("Grüße\r\n\tok"));
  CHECK(!printable_text(std::string("a\0b", 3)));
  CHECK(!printable_text("\xff\xfe"));
}

TEST_CASE("archive search: each filter, combined with AND") {
  RetrievalArchive a;
  REQUIRE(a.segs.size() >= 3);
  Filter all;
  CHECK(a.targets(all).size() == 12);
  Filter f;
  f.user = "carol";
  CHECK(a.targets(f) == Targets{"7"});
  f = {};
  f.host = "bank.example";  // itself and api.bank.example
  CHECK(a.targets(f) == Targets{"0", "1", "3", "4", "6", "7", "9", "10"});
  f = {};
  f.host = "other.example";
  f.status = 404;
  CHECK(a.targets(f) == Targets{"2", "5", "8", "11"});
  f = {};
  f.since = parse_time("2026-11-27T03:00:00Z");
  f.until = parse_time("2026-11-27T06:00:00Z");
  CHECK(a.targets(f) == Targets{"3", "4", "5"});
  f = {};
  f.until = parse_time("2026-11-27", true);
  CHECK(a.targets(f).size() == 12);
  f.user = "alice";
  f.status = 200;
  CHECK(a.targets(f) == Targets{"0", "4", "6", "10"});
  f = {};
  f.text = "de89370400";  // a request body, case-insensitive
  CHECK(a.targets(f) == Targets{"4"});
  f.text = "RESULT 1";  // response bodies: 1, 10, 11
  CHECK(a.targets(f) == Targets{"1", "10", "11"});
  f.user = "bob";
  CHECK(a.targets(f) == Targets{"1", "11"});
  f = {};
  f.user = "nobody";
  CHECK(a.targets(f).empty());

  std::string err;
  auto r = search(a.dir.string(), all, &err);
  REQUIRE(r);
  const IndexEntry& e = r->hits[4].entry;
  CHECK(e.user == "alice");
  CHECK(e.client == "10.0.0.4:40000");
  CHECK(e.method == "POST");
  CHECK(e.host == "api.bank.example");
  CHECK(e.status == 200);
  CHECK(e.time == "2026-11-27T04:00:00.000000Z");
  REQUIRE(e.records.size() == 3);
  CHECK(e.records[0].type == "request");
  CHECK(e.records[1].type == "response");
  CHECK(e.records[2].type == "metadata");
  CHECK(e.records[1].seq == e.records[0].seq + 1);
}

TEST_CASE("archive search: the index is written, and rebuilt when missing, stale or corrupt") {
  RetrievalArchive a;
  std::string err;
  std::string seg = a.segs[1].filename().string();
  auto first = load_index(a.dir.string(), seg, &err);
  REQUIRE_MESSAGE(first, err);
  CHECK(first->warning.empty());
  CHECK(peek_manifest_sha256(a.segs[1].string() + ".manifest.json") == first->index.sha256);
  fs::path idx = a.segs[1].string() + ".idx";
  REQUIRE(fs::exists(idx));
  auto again = load_index(a.dir.string(), seg, &err);
  REQUIRE(again);
  CHECK(!again->rebuilt);
  CHECK(again->index.entries.size() == first->index.entries.size());
  std::string text = read_file(idx);
  CHECK(text.starts_with("{\"format\":\"sightline-archive-index/1\""));

  SUBCASE("deleted") { fs::remove(idx); }
  SUBCASE("stale: another segment's hash") {
    auto at = text.find(first->index.sha256);
    REQUIRE(at != std::string::npos);
    text[at] = text[at] == '0' ? '1' : '0';
    write_file(idx, text);
  }
  SUBCASE("corrupt") { write_file(idx, text.substr(0, text.size() / 2)); }
  SUBCASE("forged entry: search finds it, show refuses it") {
    // The index is derived data: a doctored user only changes what search lists.
    auto at = text.find("\"user\":\"");
    REQUIRE(at != std::string::npos);
    text.replace(at, 8, "\"user\":\"mallory");
    text.erase(at + 15, text.find('"', at + 15) - (at + 15));
    write_file(idx, text);
    Filter f;
    f.user = "mallory";
    auto r = search(a.dir.string(), f, &err);
    REQUIRE(r);
    REQUIRE(r->hits.size() == 1);
    auto sealed = SealedManifest::load(a.dir.string(), r->hits[0].file, a.verify_key.get(), &err);
    REQUIRE_MESSAGE(sealed, err);
    auto ex = read_exchange(a.dir.string(), r->hits[0], &*sealed, &err);
    REQUIRE(ex);
    CHECK((ex->checked && ex->integrity.empty()));  // the records themselves are intact...
    CHECK(ex->records.size() == 3);
    return;                          // ...and still name their real user (see show)
  }
  auto rebuilt = load_index(a.dir.string(), seg, &err);
  REQUIRE_MESSAGE(rebuilt, err);
  CHECK(rebuilt->rebuilt);
  CHECK(rebuilt->index.entries.size() == first->index.entries.size());
  CHECK(read_file(idx) == index_text(first->index));
}

TEST_CASE("archive show: find by id, records checked against the signed manifest") {
  RetrievalArchive a;
  std::string err;
  Filter f;
  f.user = "carol";
  auto r = search(a.dir.string(), f, &err);
  REQUIRE(r);
  REQUIRE(r->hits.size() == 1);
  std::string id = r->hits[0].entry.id;
  std::string uuid = id.substr(10, 36);
  for (const std::string& given : {id, uuid, uuid.substr(0, 8)}) {
    auto hit = find_exchange(a.dir.string(), given, &err);
    REQUIRE_MESSAGE(hit, err);
    CHECK(hit->entry.id == id);
  }
  CHECK(!find_exchange(a.dir.string(), "abc", &err));
  CHECK(!find_exchange(a.dir.string(), "00000000-0000", &err));

  auto hit = find_exchange(a.dir.string(), uuid, &err);
  auto sealed = SealedManifest::load(a.dir.string(), hit->file, a.verify_key.get(), &err);
  REQUIRE_MESSAGE(sealed, err);
  auto ex = read_exchange(a.dir.string(), *hit, &*sealed, &err);
  REQUIRE_MESSAGE(ex, err);
  CHECK(ex->checked);
  CHECK(ex->integrity.empty());
  REQUIRE(ex->records.size() == 3);
  CHECK(ex->records[0].data.find("GET /item/7 HTTP/1.1") != std::string::npos);
  CHECK(ex->records[2].data.find("\"carol\"") != std::string::npos);
  auto nokey = read_exchange(a.dir.string(), *hit, nullptr, &err);
  REQUIRE(nokey);
  CHECK(!nokey->checked);
  CHECK(nokey->integrity.empty());
  Archive other;  // another archive's key does not vouch for this one
  CHECK(!SealedManifest::load(a.dir.string(), hit->file, other.verify_key.get(), &err));
  CHECK(err.find("bad_signature") != std::string::npos);

  // A response changed (the member recompressed); the signed manifest still holds.
  fs::path seg = a.dir / hit->file;
  auto parts = members_of(read_file(seg));
  std::size_t resp = 0;
  for (std::size_t i = 0; i < parts.size(); ++i)
    if (scan_members(parts[i]).members[0].data.find("Result 7") != std::string::npos) resp = i;
  REQUIRE(resp > 0);
  std::string data = scan_members(parts[resp]).members[0].data;
  data.replace(data.find("Result 7"), 8, "Result 8");
  parts[resp] = *gzip_member(data);
  write_file(seg, join(parts));
  // The member's new length may shift the records after it: search rebuilds the index.
  hit = find_exchange(a.dir.string(), uuid, &err);
  REQUIRE_MESSAGE(hit, err);
  auto bad = read_exchange(a.dir.string(), *hit, &*sealed, &err);
  REQUIRE_MESSAGE(bad, err);
  CHECK(bad->integrity.find("WARC-Block-Digest does not match") != std::string::npos);
}

TEST_CASE("archive export: a signed subset that verify accepts, and tampering with it") {
  RetrievalArchive a;
  fs::path out_dir = a.tmp.path / "case-42";
  fs::create_directory(out_dir);
  fs::path out = out_dir / "case-42.warc.gz";
  ExportOptions o;
  o.dir = a.dir.string();
  o.out = out.string();
  o.filter.user = "bob";
  o.filter_json = {{"user", "bob"}};
  o.signing_key = a.signing_key.get();
  std::string err;
  auto r = export_archive(o, &err);
  REQUIRE_MESSAGE(r, err);
  CHECK(r->exchanges == 5);
  CHECK(r->records == 15);
  CHECK(r->sources.size() >= 2);
  std::string again_err;
  CHECK(!export_archive(o, &again_err));  // never overwritten
  CHECK(again_err.find("exists") != std::string::npos);

  auto verify_path = [&](const fs::path& p) {
    auto rep = verify_archive(p.string(), a.verify_key.get(), &err);
    REQUIRE_MESSAGE(rep, err);
    return *rep;
  };
  Report ok = verify_path(out);
  expect_intact(ok);
  CHECK(ok.records == 16);
  expect_intact(verify_path(out_dir));

  // Byte-exact copies: every exported member is a member of its source.
  std::string exported = read_file(out);
  auto m = parse_export_manifest(read_file(out.string() + ".manifest.json"), &err);
  REQUIRE_MESSAGE(m, err);
  CHECK(m->records[0].record.type == "warcinfo");
  CHECK(m->records[0].source.empty());
  for (std::size_t i = 1; i < m->records.size(); ++i) {
    const auto& e = m->records[i];
    auto src = parse_manifest(read_file(a.dir / (e.source + ".manifest.json")), nullptr);
    REQUIRE(src);
    REQUIRE(load_records(a.dir.string(), *src, nullptr));
    auto it = std::find_if(src->records.begin(), src->records.end(), [&](auto& s) { return s.id == e.record.id; });
    REQUIRE(it != src->records.end());
    CHECK(it->seq == e.record.seq);
    CHECK(it->chain == e.record.chain);
    std::string src_bytes = read_file(a.dir / e.source);
    CHECK(exported.substr(e.record.offset, e.record.length) == src_bytes.substr(it->offset, it->length));
  }
  // Python's gzip reads the export like any .warc.gz.
  std::string cmd = "python3 -c \"import gzip,sys; d=gzip.open(sys.argv[1]).read(); "
                    "sys.exit(0 if d.count(b'WARC/1.1\\r\\n')==16 and b'sightline-export-source' in d else 1)\" " +
                    out.string();
  CHECK(std::system(cmd.c_str()) == 0);

  // Next to the archive it came from, verify also cross-checks the sources.
  fs::copy(out, a.dir / "case-42.warc.gz");
  fs::copy(out.string() + ".manifest.json", a.dir / "case-42.warc.gz.manifest.json");
  fs::copy(out.string() + ".manifest.json.sig", a.dir / "case-42.warc.gz.manifest.json.sig");
  Report both = verify_path(a.dir);
  expect_intact(both);
  CHECK(both.segments == a.segs.size() + 1);

  auto parts = members_of(exported);
  SUBCASE("a body changed") {
    std::string data = scan_members(parts[2]).members[0].data;  // the first response
    auto at = data.find("Result");
    REQUIRE(at != std::string::npos);
    data[at] = 'r';
    parts[2] = *gzip_member(data);
    write_file(out, join(parts));
    expect_single(verify_path(out), FindingKind::modified);
  }
  SUBCASE("a record deleted") {
    parts.erase(parts.begin() + 4);
    write_file(out, join(parts));
    Report rep = verify_path(out);
    INFO(describe(rep));
    CHECK(count_kind(rep, FindingKind::deleted) == 1);
  }
  SUBCASE("a record added from the archive") {
    auto src = members_of(read_file(a.segs[0]));
    parts.push_back(src[1]);
    write_file(out, join(parts));
    expect_single(verify_path(out), FindingKind::inserted);
  }
  SUBCASE("the manifest edited") {
    std::string text = read_file(out.string() + ".manifest.json");
    text.replace(text.find("\"bob\""), 5, "\"eve\"");
    write_file(out.string() + ".manifest.json", text);
    expect_single(verify_path(out), FindingKind::bad_signature);
  }
  SUBCASE("the manifest gone") {
    fs::remove(out.string() + ".manifest.json");
    expect_single(verify_path(out_dir), FindingKind::missing_manifest);
  }
}

TEST_CASE("archive export: refuses records that do not match their sealed manifest") {
  RetrievalArchive a;
  auto parts = members_of(read_file(a.segs[0]));
  std::string data = scan_members(parts[1]).members[0].data;  // exchange 0's request
  data.replace(data.find("q=0"), 3, "q=9");
  parts[1] = *gzip_member(data);
  write_file(a.segs[0], join(parts));
  ExportOptions o;
  o.dir = a.dir.string();
  o.out = (a.tmp.path / "all.warc.gz").string();
  o.signing_key = a.signing_key.get();
  std::string err;
  CHECK(!export_archive(o, &err));
  CHECK(err.find("refusing to export") != std::string::npos);
  CHECK(!fs::exists(o.out));
  o.out = (a.tmp.path / "w1-20261127T000000Z-000001.warc.gz").string();
  CHECK(!export_archive(o, &err));  // a segment's name would confuse verify
}

TEST_CASE("archive prune: old unheld segments go with signed tombstones; verify stays intact") {
  RetrievalArchive a;
  REQUIRE(a.segs.size() >= 4);
  std::string carol = a.segment_of("carol");
  std::size_t carol_at = static_cast<std::size_t>(
      std::find_if(a.segs.begin(), a.segs.end(), [&](auto& p) { return p.filename() == carol; }) - a.segs.begin());
  REQUIRE(carol_at + 1 < a.segs.size());  // not the latest: it is prunable
  for (const auto& s : a.segs) a.backdate(s, 24h * 40);
  std::string err;
  std::string first = a.segs[0].filename().string();

  // Nothing is old enough; then a dry run lists without deleting.
  CHECK(a.prune_now(60).deleted.empty());
  auto dry = a.prune_now(30, true);
  CHECK(dry.deleted.size() == a.segs.size() - 1);  // all but the writer's latest
  CHECK(fs::exists(a.segs[0]));
  CHECK(!fs::exists(a.dir / "pruned.json"));

  auto h1 = add_hold(a.dir.string(), {{}, first, {}, {}, {}, "matter 1", "tester", {}}, &err);
  REQUIRE_MESSAGE(h1, err);
  auto h2 = add_hold(a.dir.string(), {{}, {}, "carol", "2026-11-27", "2026-11-27", "investigation 7", "tester", {}}, &err);
  REQUIRE_MESSAGE(h2, err);
  CHECK(!add_hold(a.dir.string(), {{}, {}, {}, {}, {}, "no scope", "tester", {}}, &err));
  CHECK(!add_hold(a.dir.string(), {{}, {}, "x", {}, {}, {}, "tester", {}}, &err));  // no reason
  auto holds = load_holds(a.dir.string(), &err);
  REQUIRE(holds);
  CHECK(holds->size() == 2);

  auto r = a.prune_now(30);
  INFO(r.held.size());
  CHECK(r.held.size() == 2);
  CHECK(r.skipped.empty());
  CHECK(r.deleted.size() == a.segs.size() - 3);
  std::set<std::string> deleted;
  for (const auto& t : r.deleted) {
    deleted.insert(t.segment);
    CHECK(!fs::exists(a.dir / t.segment));
    CHECK(!fs::exists(a.dir / (t.segment + ".manifest.json")));
    CHECK(!fs::exists(a.dir / (t.segment + ".records.tsv")));
    CHECK(t.chain_head.starts_with("sha256:"));
    auto line = nlohmann::json::parse(deletion_log_line(t, false));
    CHECK(line["event"] == "archive_pruned");
    CHECK(line["segment"] == t.segment);
    CHECK(line["chain_head"] == t.chain_head);
  }
  CHECK(!deleted.count(first));
  CHECK(!deleted.count(carol));
  CHECK(fs::exists(a.segs.back()));
  CHECK(fs::exists(a.dir / "pruned.json"));
  CHECK(fs::exists(a.dir / "pruned.json.sig"));

  Report rep = a.verify();
  expect_intact(rep);
  CHECK(count_kind(rep, FindingKind::pruned) == r.deleted.size());
  CHECK(a.prune_now(30).deleted.empty());  // nothing more to do

  SUBCASE("lifting the holds lets them go") {
    REQUIRE(remove_hold(a.dir.string(), h1->id, &err));
    REQUIRE(remove_hold(a.dir.string(), h2->id, &err));
    CHECK(!remove_hold(a.dir.string(), h2->id, &err));
    CHECK(a.prune_now(30).deleted.size() == 2);
    Report after = a.verify();
    expect_intact(after);
    CHECK(count_kind(after, FindingKind::pruned) == a.segs.size() - 1);
    auto t = load_tombstones(a.dir.string(), a.verify_key.get(), &err);
    REQUIRE(t);
    CHECK(t->entries.size() == a.segs.size() - 1);
  }
  SUBCASE("a segment deleted without a tombstone is still reported") {
    fs::remove(a.dir / carol);
    fs::remove(a.dir / (carol + ".manifest.json"));
    fs::remove(a.dir / (carol + ".manifest.json.sig"));
    Report after = a.verify();
    INFO(describe(after));
    CHECK(count_kind(after, FindingKind::segment_deleted) == 1);
    CHECK(!after.intact());
  }
  SUBCASE("an edited tombstone file vouches for nothing") {
    std::string text = read_file(a.dir / "pruned.json");
    text.replace(text.find("retention"), 9, "RETENTION");
    write_file(a.dir / "pruned.json", text);
    Report after = a.verify();
    INFO(describe(after));
    CHECK(count_kind(after, FindingKind::bad_signature) == 1);
    CHECK(count_kind(after, FindingKind::segment_deleted) >= 1);
    PruneOptions o;
    o.dir = a.dir.string();
    o.retention_days = 30;
    o.signing_key = a.signing_key.get();
    CHECK(!prune(o, &err));  // never extends tombstones that do not verify
  }
  SUBCASE("a prune interrupted before its rename still verifies") {
    fs::rename(a.dir / "pruned.json", a.dir / "pruned.json.next");
    expect_intact(a.verify());
  }
}
