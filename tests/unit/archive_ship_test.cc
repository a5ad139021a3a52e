// The S3 target and credential parsing, and the shipping journal's crash
// handling. Uploads themselves are tested against a real Ceph RGW in
// tests/e2e/99_s3_test.py.
#include "archive/s3.h"
#include "archive/ship.h"
#include "archive_fixtures.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>

using namespace sightline::archive;
using archive_fixtures::TempDir;

TEST_CASE("s3: targets, path style and virtual host") {
  std::string why;
  auto t = s3::parse_target("http://127.0.0.1:7480/archive/fleet/eu/", false, &why);
  REQUIRE_MESSAGE(t, why);
  CHECK(t->scheme == "http");
  CHECK(t->host == "127.0.0.1:7480");
  CHECK(t->bucket == "archive");
  CHECK(t->prefix == "fleet/eu");
  CHECK(s3::to_string(*t) == "http://127.0.0.1:7480/archive/fleet/eu");
  auto bare = s3::parse_target("https://s3.example/archive", false, &why);
  REQUIRE(bare);
  CHECK(bare->prefix.empty());
  auto vh = s3::parse_target("https://acme-archive.s3.eu-west-1.amazonaws.com/proxies", true, &why);
  REQUIRE(vh);
  CHECK(vh->bucket == "acme-archive");
  CHECK(vh->prefix == "proxies");
  CHECK(s3::to_string(*vh) == "https://acme-archive.s3.eu-west-1.amazonaws.com/proxies");
  for (const char* bad : {"s3.example/archive", "ftp://h/b", "http:///b", "http://h/", "http://ak:sk@h/b",
                          "http://h/b/p?x=1", "http://h/b/a//c", "http://h/b/../c", "http://h/b/a/./c", "http://h/../p"}) {
    CAPTURE(bad);
    CHECK_FALSE(s3::parse_target(bad, false, &why));
    CHECK(!why.empty());
  }
}

TEST_CASE("s3: credentials from values, a file, or the environment") {
  std::string why;
  auto c = s3::resolve_credentials("AK", "SK", "", &why);
  REQUIRE(c);
  CHECK((c->access_key == "AK" && c->secret_key == "SK"));
  CHECK_FALSE(s3::resolve_credentials("AK", "", "", &why));
  TempDir tmp;
  auto aws = (tmp.path / "aws").string(), plain = (tmp.path / "plain").string(), empty = (tmp.path / "empty").string();
  std::ofstream(aws) << "[default]\n# comment\naws_access_key_id = AKF\naws_secret_access_key = SKF\n";
  std::ofstream(plain) << "AKP\nSKP\n";
  std::ofstream(empty) << "# nothing\n";
  // A secret others can read is refused, whatever it holds.
  CHECK_FALSE(s3::resolve_credentials("", "", aws, &why));
  CHECK(why.find("chmod 600") != std::string::npos);
  for (const auto& f : {aws, plain, empty}) std::filesystem::permissions(f, std::filesystem::perms::owner_read);
  c = s3::resolve_credentials("", "", aws, &why);
  REQUIRE_MESSAGE(c, why);
  CHECK((c->access_key == "AKF" && c->secret_key == "SKF"));
  c = s3::resolve_credentials("", "", plain, &why);
  REQUIRE_MESSAGE(c, why);
  CHECK((c->access_key == "AKP" && c->secret_key == "SKP"));
  CHECK_FALSE(s3::resolve_credentials("", "", empty, &why));
  CHECK(why.find("SKF") == std::string::npos);
  CHECK_FALSE(s3::resolve_credentials("", "", (tmp.path / "missing").string(), &why));
  ::setenv("AWS_ACCESS_KEY_ID", "AKE", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", "SKE", 1);
  c = s3::resolve_credentials("", "", "", &why);
  REQUIRE(c);
  CHECK((c->access_key == "AKE" && c->secret_key == "SKE"));
  ::unsetenv("AWS_ACCESS_KEY_ID");
  ::unsetenv("AWS_SECRET_ACCESS_KEY");
  CHECK_FALSE(s3::resolve_credentials("", "", "", &why));
}

TEST_CASE("ship: keys and retain-until dates") {
  s3::ClientOptions o;
  std::string why;
  o.target = *s3::parse_target("http://h:1/b/fleet", false, &why);
  s3::Client c(o);
  CHECK(ship_key(c, "proxy1", "2026-11-27T10:00:00.123Z", "s.warc.gz") == "fleet/proxy1/2026/11/27/s.warc.gz");
  CHECK(s3::iso8601(std::chrono::system_clock::time_point(std::chrono::seconds(1795773600))) ==
        "2026-11-27T10:00:00Z");
}

TEST_CASE("ship: the journal keeps confirmed lines, cuts a torn tail, refuses damage in the middle") {
  TempDir tmp;
  const std::string dir = tmp.path.string();
  std::string why;
  {
    auto j = ShipJournal::open(dir, &why);
    REQUIRE_MESSAGE(j, why);
    ShippedFile f;
    f.segment = "s1.warc.gz";
    f.file = "s1.warc.gz";
    f.key = "p/n/2026/11/27/s1.warc.gz";
    f.version_id = "v1";
    f.sha256 = std::string(64, 'a');
    f.size = 10;
    REQUIRE(!j->record(f));
    f.file = "s1.warc.gz.manifest.json";
    f.version_id = "v2";
    REQUIRE(!j->record(f));
    REQUIRE(!j->record_complete("s1.warc.gz", "v2"));
  }
  const std::string path = dir + "/shipping.journal";
  std::ofstream(path, std::ios::app) << "{\"segment\":\"s2.warc.gz\",\"file\":\"s2.warc.gz\",\"version_id\":\"v3\"}\n"
                                     << "{\"segment\":\"s2.warc.gz\",\"file\":\"s2.w";  // torn by a crash
  {
    auto j = ShipJournal::open(dir, &why);
    REQUIRE_MESSAGE(j, why);
    CHECK(j->cut_bytes() > 0);
    CHECK(j->complete("s1.warc.gz"));
    CHECK_FALSE(j->complete("s2.warc.gz"));
    // A complete segment keeps one entry, not its files.
    CHECK_FALSE(j->find("s1.warc.gz.manifest.json"));
    CHECK(j->manifest_ref("s1.warc.gz") == "p/n/2026/11/27/s1.warc.gz version v2");
    REQUIRE(j->find("s2.warc.gz"));
    CHECK(j->find("s2.warc.gz")->version_id == "v3");
    // One shipper per directory.
    std::string busy;
    CHECK_FALSE(ShipJournal::open(dir, &busy));
    CHECK(busy.find("another shipper") != std::string::npos);
  }
  // The torn bytes are gone from the file too.
  auto again = ShipJournal::open(dir, &why);
  REQUIRE_MESSAGE(again, why);
  CHECK(again->cut_bytes() == 0);
  again.reset();
  // Damage before the last line is not a crash: refused, named.
  std::ofstream(path, std::ios::app) << "{\"segment\":7,\"file\":[]}\n{\"segment\":\"s3\",\"complete\":true}\n";
  CHECK_FALSE(ShipJournal::open(dir, &why));
  CHECK(why.find("unreadable line") != std::string::npos);
}
