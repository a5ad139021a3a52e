#include "app/config.h"
#include "archive/warc.h"

#include <doctest/doctest.h>

using namespace sightline::app;

namespace {
std::optional<Config> parse(const std::string& text, ConfigError& err) {
  return parse_config(text, "/etc/sightline/test.toml", err);
}
}  // namespace

TEST_CASE("a full config parses") {
  ConfigError err;
  auto cfg = parse(R"(
workers = 2
[[listener]]
address = "127.0.0.1:3129"
mode = "explicit"
[[listener]]
address = "[::1]:3129"
[ca]
cert = "ca/ca.crt"
key = "/abs/ca.key"
[client]
min_version = "1.3"
tickets = false
ticket_lifetime = "2h"
[upstream]
ca_file = "origin.pem"
on_invalid = "forward-untrusted"
alpn = ["http/1.1"]
reuse = false
reuse_idle_timeout = "1500ms"
reuse_per_origin = 4
[forge]
key_lifetime = "30m"
cache_entries = 500
[timeouts]
connect = "3s"
handshake = "500ms"
idle = "2m"
[limits]
relay_buffer = 131072
[log]
level = "debug"
)", err);
  REQUIRE_MESSAGE(cfg, err.message);
  CHECK(cfg->workers == 2);
  CHECK(cfg->listeners.size() == 2);
  CHECK(cfg->ca_cert == "/etc/sightline/ca/ca.crt");  // relative to the file
  CHECK(cfg->ca_key == "/abs/ca.key");
  CHECK(cfg->client_min_tls13);
  CHECK_FALSE(cfg->client_tickets);
  CHECK(cfg->client_ticket_lifetime == std::chrono::hours(2));
  CHECK(cfg->upstream_ca_file == "/etc/sightline/origin.pem");
  CHECK(cfg->on_invalid == sightline::tls::OnInvalid::forward_untrusted);
  CHECK(cfg->upstream_alpn == std::vector<std::string>{"http/1.1"});
  CHECK_FALSE(cfg->upstream_reuse);
  CHECK(cfg->upstream_reuse_idle == std::chrono::milliseconds(1500));
  CHECK(cfg->upstream_reuse_per_origin == 4);
  CHECK(cfg->leaf_key_lifetime == std::chrono::minutes(30));
  CHECK(cfg->cert_cache_entries == 500);
  CHECK(cfg->connect_timeout == std::chrono::seconds(3));
  CHECK(cfg->handshake_timeout == std::chrono::milliseconds(500));
  CHECK(cfg->relay_high_watermark == 131072);
  CHECK(validate(*cfg, err));
}

TEST_CASE("errors name file, line and key") {
  struct Case {
    const char* text;
    const char* expect;
  };
  for (auto c : {
           Case{"[upstream]\non_invalid = \"maybe\"\n", "test.toml:2:14: key 'upstream.on_invalid': expected one of"},
           Case{"[upstream]\nca_fil = \"x\"\n", "test.toml:2:1: key 'upstream.ca_fil': unknown key"},
           Case{"[upstream]\nreuse_per_origin = 0\n", "key 'upstream.reuse_per_origin': expected an integer from 1"},
           Case{"[upstream]\nreuse = \"yes\"\n", "key 'upstream.reuse': expected true or false"},
           Case{"[client]\nticket_lifetime = \"8d\"\n", "key 'client.ticket_lifetime': expected a duration from 1s"},
           Case{"[client]\nticket_lifetime = \"500ms\"\n", "key 'client.ticket_lifetime': expected a duration from 1s"},
           Case{"bogus = 1\n", "test.toml:1:1: key 'bogus': unknown key"},
           Case{"workers = -1\n", "key 'workers': expected an integer"},
           Case{"[timeouts]\nconnect = \"10\"\n", "key 'timeouts.connect': expected a positive duration"},
           Case{"[[listener]]\naddress = \"localhost:80\"\n", "key 'listener.address'"},
           Case{"[[listener]]\naddress = \"127.0.0.1:80\"\nmode = \"magic\"\n", "key 'listener.mode'"},
           Case{"ca = 5\n", "key 'ca': expected a table"},
           Case{"[client\n", "test.toml:1:"},
           Case{"[identity]\nrealm = \"a\\\"b\"\n", "key 'identity.realm': expected printable ASCII"},
           Case{"[identity]\ncache_ttl = \"0s\"\n", "key 'identity.cache_ttl': expected a positive duration"},
           Case{"[identity]\npassword_file = \"x\"\n", "key 'identity.password_file': unknown key"},
       }) {
    CAPTURE(c.text);
    ConfigError err;
    CHECK_FALSE(parse(c.text, err));
    CHECK_MESSAGE(err.message.find(c.expect) != std::string::npos, err.message);
  }
}

TEST_CASE("validation and listen overrides") {
  ConfigError err;
  Config cfg = default_config();
  CHECK_FALSE(validate(cfg, err));  // no CA
  cfg.ca_cert = "a";
  cfg.ca_key = "b";
  CHECK(validate(cfg, err));
  CHECK(set_listen_addresses(cfg, {"127.0.0.1:1", "[::1]:2"}, {"127.0.0.1:3"}, {}, err));
  CHECK(cfg.listeners.size() == 3);
  CHECK(cfg.listeners[2].mode == ListenerMode::redirect);
  CHECK_FALSE(set_listen_addresses(cfg, {"example.com:1"}, {}, {}, err));
}

TEST_CASE("[identity] section") {
  ConfigError err;
  auto def = parse("", err);
  REQUIRE_MESSAGE(def, err.message);
  CHECK_FALSE(def->identity.enabled());
  CHECK(def->identity.realm == "sightline");
  CHECK(def->identity.cache_ttl == std::chrono::minutes(5));
  auto cfg = parse("[identity]\ncredentials = \"users\"\nuser_map = \"/srv/map\"\ngroups = \"g/groups\"\n"
                   "realm = \"Bank proxy\"\ncache_ttl = \"10m\"\n", err);
  REQUIRE_MESSAGE(cfg, err.message);
  CHECK(cfg->identity.enabled());
  CHECK(cfg->identity.credentials == "/etc/sightline/users");  // relative to the config file
  CHECK(cfg->identity.user_map == "/srv/map");
  CHECK(cfg->identity.groups == "/etc/sightline/g/groups");
  CHECK(cfg->identity.realm == "Bank proxy");
  CHECK(cfg->identity.cache_ttl == std::chrono::minutes(10));
}

TEST_CASE("[policy] auto-bypass threshold and window") {
  ConfigError err;
  auto def = parse("", err);
  REQUIRE_MESSAGE(def, err.message);
  CHECK(def->auto_bypass_threshold == 3);
  CHECK(def->auto_bypass_window == std::chrono::minutes(5));

  auto cfg = parse("[policy]\nauto_bypass_threshold = 5\nauto_bypass_window = \"30s\"\n", err);
  REQUIRE_MESSAGE(cfg, err.message);
  CHECK(cfg->auto_bypass_threshold == 5);
  CHECK(cfg->auto_bypass_window == std::chrono::seconds(30));

  struct Case {
    const char* text;
    const char* expect;
  };
  for (auto c : {
           Case{"[policy]\nauto_bypass_threshold = 0\n",
                "test.toml:2:25: key 'policy.auto_bypass_threshold': expected an integer from 1 to 100"},
           Case{"[policy]\nauto_bypass_threshold = 101\n", "key 'policy.auto_bypass_threshold'"},
           Case{"[policy]\nauto_bypass_threshold = \"3\"\n", "key 'policy.auto_bypass_threshold'"},
           Case{"[policy]\nauto_bypass_window = \"0s\"\n",
                "key 'policy.auto_bypass_window': expected a positive duration"},
           Case{"[policy]\nauto_bypass_window = 300\n", "key 'policy.auto_bypass_window'"},
       }) {
    CAPTURE(c.text);
    ConfigError e;
    CHECK_FALSE(parse(c.text, e));
    CHECK_MESSAGE(e.message.find(c.expect) != std::string::npos, e.message);
  }
}

TEST_CASE("[pcap] and [keylog] sections") {
  ConfigError err;
  auto def = parse("", err);
  REQUIRE_MESSAGE(def, err.message);
  CHECK_FALSE(def->pcap.enabled());
  CHECK(def->keylog.client_file.empty());

  auto cfg = parse("[pcap]\ndir = \"pcap\"\nformat = \"pcap\"\nmax_file_size = 1048576\n"
                   "max_file_age = \"10m\"\nmax_files = 4\nport_map = [\"443:80\", \"8443:8080\"]\n"
                   "over_ip = \"127.0.0.1:57012\"\nqueue_size = 1048576\non_overflow = \"block\"\n"
                   "[keylog]\nclient_file = \"/tmp/c.keys\"\nupstream_file = \"u.keys\"\nrules = [\"debug\"]\n",
                   err);
  REQUIRE_MESSAGE(cfg, err.message);
  CHECK(cfg->pcap.enabled());
  CHECK(cfg->pcap.dir == "/etc/sightline/pcap");  // relative to the config file
  CHECK(cfg->pcap.format == "pcap");
  CHECK(cfg->pcap.max_file_bytes == 1048576);
  CHECK(cfg->pcap.max_file_age == std::chrono::minutes(10));
  CHECK(cfg->pcap.max_files == 4);
  REQUIRE(cfg->pcap.port_map.size() == 2);
  CHECK(cfg->pcap.port_map[0] == std::pair<std::uint16_t, std::uint16_t>{443, 80});
  CHECK(cfg->pcap.over_ip == "127.0.0.1:57012");
  CHECK(cfg->pcap.on_overflow == "block");
  CHECK(cfg->keylog.client_file == "/tmp/c.keys");
  CHECK(cfg->keylog.upstream_file == "/etc/sightline/u.keys");
  CHECK(cfg->keylog.rules == std::vector<std::string>{"debug"});

  for (const char* bad : {"[pcap]\nport_map = [\"443\"]\n", "[pcap]\nport_map = [\"0:80\"]\n",
                          "[pcap]\nport_map = [\"443:70000\"]\n", "[pcap]\nover_ip = \"localhost\"\n",
                          "[pcap]\nformat = \"json\"\n", "[pcap]\non_overflow = \"wait\"\n",
                          "[pcap]\nmax_file_size = 10\n", "[pcap]\nfile = \"x\"\n",
                          "[keylog]\nrules = \"debug\"\n"}) {
    CAPTURE(bad);
    ConfigError e;
    CHECK_FALSE(parse(bad, e));
    CHECK(e.message.find("key '") != std::string::npos);
  }
}

TEST_CASE("[icap] section") {
  ConfigError err;
  auto d = parse("", err);
  REQUIRE(d);
  CHECK_FALSE(d->icap.enabled());
  CHECK(d->icap.fail == "closed");  // the DLP-safe default
  auto cfg = parse(
      "[icap]\nreqmod = \"icap://127.0.0.1:1344/url_check\"\nrespmod = \"icap://[::1]/av\"\n"
      "fail = \"open\"\nmax_body = 1048576\nconnect_timeout = \"500ms\"\nresponse_timeout = \"3s\"\n",
      err);
  REQUIRE_MESSAGE(cfg, err.message);
  CHECK(cfg->icap.enabled());
  CHECK(cfg->icap.reqmod == "icap://127.0.0.1:1344/url_check");
  CHECK(cfg->icap.respmod == "icap://[::1]/av");
  CHECK(cfg->icap.fail == "open");
  CHECK(cfg->icap.max_body == 1048576);
  CHECK(cfg->icap.connect_timeout == std::chrono::milliseconds(500));
  CHECK(cfg->icap.response_timeout == std::chrono::seconds(3));
  CHECK(cfg->icap.all_services().size() == 2);
  CHECK(cfg->icap.all_services()[0].name == "reqmod");
  CHECK(cfg->icap.all_services()[1].fail == "open");  // the section's default

  // Several services per method, each with its own fail mode, chained in
  // order after the shorthand ones.
  auto multi = parse(
      "[icap]\nreqmod = \"icap://127.0.0.1/url_check\"\n"
      "[[icap.service]]\nname = \"dlp\"\nurl = \"icap://10.0.0.1/dlp\"\nmethod = \"reqmod\"\nfail = \"open\"\n"
      "[[icap.service]]\nname = \"av\"\nurl = \"icap://10.0.0.2/av\"\nmethod = \"respmod\"\n",
      err);
  REQUIRE_MESSAGE(multi, err.message);
  auto all = multi->icap.all_services();
  REQUIRE(all.size() == 3);
  CHECK(all[0].name == "reqmod");
  CHECK(all[0].fail == "closed");
  CHECK(all[1].name == "dlp");
  CHECK(all[1].method == "reqmod");
  CHECK(all[1].fail == "open");
  CHECK(all[2].name == "av");
  CHECK(all[2].method == "respmod");
  CHECK(all[2].fail == "closed");
  for (const char* bad : {
           "[[icap.service]]\nname = \"a\"\nurl = \"icap://h/s\"\n",                        // no method
           "[[icap.service]]\nname = \"a\"\nmethod = \"reqmod\"\n",                         // no url
           "[[icap.service]]\nurl = \"icap://h/s\"\nmethod = \"reqmod\"\n",                 // no name
           "[[icap.service]]\nname = \"A b\"\nurl = \"icap://h/s\"\nmethod = \"reqmod\"\n",
           "[[icap.service]]\nname = \"a\"\nurl = \"icap://h/s\"\nmethod = \"options\"\n",
           "[[icap.service]]\nname = \"a\"\nurl = \"icap://h/s\"\nmethod = \"reqmod\"\nfail = \"x\"\n",
           "[[icap.service]]\nname = \"a\"\nurl = \"http://h/s\"\nmethod = \"reqmod\"\n",
           "[[icap.service]]\nname = \"a\"\nurl = \"icap://h/s\"\nmethod = \"reqmod\"\nport = 1\n",
           "[icap]\nrespmod = \"icap://h/s\"\n[[icap.service]]\nname = \"respmod\"\nurl = \"icap://h/t\"\n"
           "method = \"respmod\"\n",  // clashes with the shorthand's name
       }) {
    CAPTURE(bad);
    ConfigError e;
    CHECK_FALSE(parse(bad, e));
    CHECK(e.message.find("key 'icap.service") != std::string::npos);
  }
  for (const char* bad : {"[icap]\nreqmod = \"http://x/y\"\n", "[icap]\nrespmod = \"icap://host\"\n",
                          "[icap]\nfail = \"maybe\"\n", "[icap]\nmax_body = -1\n",
                          "[icap]\nservice = \"x\"\n"}) {
    CAPTURE(bad);
    ConfigError e;
    CHECK_FALSE(parse(bad, e));
    CHECK(e.message.find("key 'icap.") != std::string::npos);
  }
}

TEST_CASE("[archive] section") {
  ConfigError err;
  auto d = parse("", err);
  REQUIRE(d);
  CHECK_FALSE(d->archive.enabled());
  CHECK(d->archive.sync == "record");       // durable by default
  CHECK(d->archive.on_failure == "closed");  // refuse rather than lose records
  CHECK(d->archive.compression == -1);       // "fast"
  CHECK(d->archive.compress_min_bytes == sightline::archive::Compression::kDefaultMinBytes);
  CHECK(d->archive.commit_delay == std::chrono::milliseconds(10));
  auto fast = parse("[archive]\ncompression = \"fast\"\n", err);
  REQUIRE_MESSAGE(fast, err.message);
  CHECK(fast->archive.compression == -1);
  auto cfg = parse(
      "[archive]\ndir = \"/var/lib/a\"\nkey = \"/etc/a.key\"\nall = true\nsync = \"interval\"\n"
      "interval_ms = 250\nmax_segment_bytes = 1048576\nmax_segment_age = \"10m\"\nmax_body = 1024\n"
      "queue_bytes = 1048576\non_failure = \"open\"\nwriter_id = \"proxy_1.dc\"\nretention_days = 2555\ncompression = 6\n"
      "compress_min_bytes = 0\ncommit_delay = \"2ms\"\n",
      err);
  REQUIRE_MESSAGE(cfg, err.message);
  const ArchiveConfig& a = cfg->archive;
  CHECK(a.enabled());
  CHECK(a.dir == "/var/lib/a");
  CHECK(a.key == "/etc/a.key");
  CHECK(a.all);
  CHECK(a.sync == "interval");
  CHECK(a.sync_interval == std::chrono::milliseconds(250));
  CHECK(a.max_segment_bytes == 1048576);
  CHECK(a.max_segment_age == std::chrono::minutes(10));
  CHECK(a.max_body == 1024);
  CHECK(a.queue_bytes == 1048576);
  CHECK(a.on_failure == "open");
  CHECK(a.writer_id == "proxy_1.dc");
  CHECK(a.retention_days == 2555);  // 7 years
  CHECK(a.compression == 6);
  CHECK(a.compress_min_bytes == 0);
  CHECK(a.commit_delay == std::chrono::milliseconds(2));
  for (const char* bad : {"[archive]\nsync = \"always\"\n", "[archive]\non_failure = \"maybe\"\n",
                          "[archive]\ninterval_ms = 0\n", "[archive]\nwriter_id = \"a/b\"\n",
                          "[archive]\nqueue_bytes = 10\n", "[archive]\nretention = 3\n",
                          "[archive]\ncompression = 10\n", "[archive]\ncompression = -1\n",
                          "[archive]\ncompression = \"best\"\n", "[archive]\ncommit_delay = \"0ms\"\n",
                          "[archive]\ncompress_min_bytes = -1\n"}) {
    CAPTURE(bad);
    ConfigError e;
    CHECK_FALSE(parse(bad, e));
    CHECK(e.message.find("key 'archive.") != std::string::npos);
  }
  // An archive needs its signing key.
  auto no_key = parse("[[listener]]\naddress = \"127.0.0.1:3128\"\n[ca]\ncert = \"c\"\nkey = \"k\"\n"
                      "[archive]\ndir = \"/var/lib/a\"\n",
                      err);
  REQUIRE_MESSAGE(no_key, err.message);
  ConfigError ve;
  CHECK_FALSE(validate(*no_key, ve));
  CHECK(ve.message.find("archive.key") != std::string::npos);
}

TEST_CASE("the shipped example configuration parses") {
  ConfigError err;
  auto cfg = load_config_file(std::string(SIGHTLINE_TEST_DATA) + "/../../deploy/sightline.example.toml", err);
  REQUIRE_MESSAGE(cfg, err.message);
  CHECK_FALSE(cfg->pcap.enabled());
  CHECK(cfg->upstream_reuse);  // the default, as shipped
  CHECK(cfg->upstream_reuse_idle == std::chrono::seconds(4));
}

TEST_CASE("config: [archive.s3] shipping settings and their checks") {
  ConfigError err;
  auto d = parse("[archive]\ndir = \"/a\"\n", err);
  REQUIRE(d);
  CHECK_FALSE(d->archive.s3.enabled());
  CHECK(d->archive.s3.lock_mode == "compliance");
  CHECK(d->archive.s3.interval == std::chrono::seconds(30));
  auto cfg = parse(
      "[archive]\ndir = \"/a\"\n[archive.s3]\nurl = \"https://s3.example/bucket/fleet\"\nvirtual_host = false\n"
      "region = \"eu-west-1\"\ncredentials_file = \"/etc/s3.cred\"\nca_file = \"/etc/ca.pem\"\nnode_id = \"p1\"\n"
      "lock_mode = \"governance\"\nretention = \"7d\"\nlegal_hold = true\ninterval = \"5s\"\nbackoff_max = \"1m\"\n"
      "ready_backlog_bytes = 1000\nready_backlog_age = \"1h\"\nmultipart_threshold = 10485760\n"
      "part_size = 5242880\n",
      err);
  REQUIRE_MESSAGE(cfg, err.message);
  const ArchiveS3Config& s = cfg->archive.s3;
  CHECK(s.enabled());
  CHECK(s.url == "https://s3.example/bucket/fleet");
  CHECK(s.region == "eu-west-1");
  CHECK(s.credentials_file == "/etc/s3.cred");
  CHECK(s.node_id == "p1");
  CHECK(s.lock_mode == "governance");
  CHECK(s.retention == std::chrono::hours(24 * 7));
  CHECK(s.legal_hold);
  CHECK(s.interval == std::chrono::seconds(5));
  CHECK(s.backoff_max == std::chrono::minutes(1));
  CHECK(s.ready_backlog_bytes == 1000);
  CHECK(s.ready_backlog_age == std::chrono::hours(1));
  CHECK(s.multipart_threshold == 10485760);
  CHECK(s.part_size == 5242880);
  for (const char* bad : {"url = \"s3.example/bucket\"\n", "url = \"https://h/\"\n", "lock_mode = \"strict\"\n",
                          "access_key = \"AK\"\n", "node_id = \"a/b\"\n", "part_size = 1024\n", "bucket = \"x\"\n",
                          "interval = \"0s\"\n", "region = \"eu:west\"\n", "node_id = \"..\"\n",
                          "retention = \"500ms\"\n", "url = \"http://h/b/../x\"\n"}) {
    CAPTURE(bad);
    ConfigError e;
    CHECK_FALSE(parse(std::string("[archive]\ndir = \"/a\"\nretention_days = 1\n[archive.s3]\n") + bad, e));
    CHECK(e.message.find("archive.s3") != std::string::npos);
  }
  // Locking needs a date: archive.s3.retention or archive.retention_days.
  ConfigError e;
  CHECK_FALSE(parse("[archive]\ndir = \"/a\"\n[archive.s3]\nurl = \"http://h/b\"\n", e));
  CHECK(e.message.find("needs a retention") != std::string::npos);
  CHECK(parse("[archive]\ndir = \"/a\"\nretention_days = 2557\n[archive.s3]\nurl = \"http://h/b\"\n", e));
  CHECK(parse("[archive]\ndir = \"/a\"\n[archive.s3]\nurl = \"http://h/b\"\nlock_mode = \"none\"\n", e));
  // 10,000 parts must cover the largest segment.
  CHECK_FALSE(parse("[archive]\ndir = \"/a\"\nmax_segment_bytes = 1099511627776\n[archive.s3]\n"
                    "url = \"http://h/b\"\nretention = \"1d\"\npart_size = 5242880\n", e));
  CHECK(e.message.find("part_size") != std::string::npos);
}
