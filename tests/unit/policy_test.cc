#include "policy/policy.h"

#include <doctest/doctest.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

using namespace sightline::policy;
namespace fs = std::filesystem;

namespace {

const std::string kFile = "/etc/sightline/policies/test.toml";

std::shared_ptr<const Policy> parse_ok(const std::string& text, const std::string& name = kFile) {
  PolicyError err;
  auto p = Policy::parse(text, name, err);
  INFO(err.message);
  REQUIRE(p);
  return p;
}

// Expects the text to be rejected with exactly `message`.
void expect_error(const std::string& text, const std::string& message,
                  const std::string& name = kFile) {
  PolicyError err;
  auto p = Policy::parse(text, name, err);
  INFO(text);
  CHECK_FALSE(p);
  CHECK(err.message == message);
}

struct Q {
  std::string name;
  std::uint16_t port = 443;
  std::string dst;
  std::string client;
  std::string user;
  std::vector<std::string> groups;

  Q() = default;
  Q(std::string n, std::uint16_t p = 443, std::string d = {}, std::string c = {})
      : name(std::move(n)), port(p), dst(std::move(d)), client(std::move(c)) {}
  Q as(std::string u, std::vector<std::string> g = {}) const {
    Q q = *this;
    q.user = std::move(u);
    q.groups = std::move(g);
    return q;
  }
};

Decision decide(const Policy& p, const Q& in) {
  Query q;
  q.server_name = in.name;
  q.dst_port = in.port;
  if (!in.dst.empty()) q.dst_ip = IpAddress::parse(in.dst);
  if (!in.client.empty()) q.client_ip = IpAddress::parse(in.client);
  q.user = in.user;
  q.groups = in.groups;
  return p.decide(q);
}

// The name of the deciding rule, or "default".
std::string who(const Policy& p, const Q& in) {
  Decision d = decide(p, in);
  return d.rule ? d.rule->name : std::string("default");
}

std::string who(const Policy& p, const std::string& name) { return who(p, Q{name}); }

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "policy_test.XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string write(const std::string& rel, const std::string& content) const {
    fs::path p = path / rel;
    fs::create_directories(p.parent_path());
    std::ofstream out(p, std::ios::binary);
    out << content;
    return p.string();
  }
};

}  // namespace

TEST_CASE("actions have their file spelling") {
  CHECK(to_string(Action::inspect) == "inspect");
  CHECK(to_string(Action::bypass) == "bypass");
  CHECK(to_string(Action::block) == "block");
}

TEST_CASE("normalize_name") {
  CHECK(normalize_name("example.com") == "example.com");
  CHECK(normalize_name("WWW.Example.COM") == "www.example.com");
  CHECK(normalize_name("example.com.") == "example.com");
  CHECK(normalize_name("bücher.example") == "xn--bcher-kva.example");
  CHECK(normalize_name("BÜCHER.Example.") == "xn--bcher-kva.example");
  CHECK(normalize_name("XN--BCHER-KVA.example") == "xn--bcher-kva.example");
  CHECK(normalize_name("straße.de") == "xn--strae-oqa.de");  // IDNA2008, not transitional "strasse"
  CHECK(normalize_name("_dmarc.example.com") == "_dmarc.example.com");
  CHECK(normalize_name("a-b.example") == "a-b.example");
  CHECK(normalize_name(std::string(63, 'a') + ".example") == std::string(63, 'a') + ".example");

  CHECK_FALSE(normalize_name(""));
  CHECK_FALSE(normalize_name("."));
  CHECK_FALSE(normalize_name("a..b"));
  CHECK_FALSE(normalize_name(".example.com"));
  CHECK_FALSE(normalize_name("example.com.."));
  CHECK_FALSE(normalize_name("exa mple.com"));
  CHECK_FALSE(normalize_name("*.example.com"));
  CHECK_FALSE(normalize_name("ex/ample.com"));
  CHECK_FALSE(normalize_name("1.2.3.4:443"));
  CHECK_FALSE(normalize_name(std::string(64, 'a') + ".example"));
  std::string long_name;
  for (int i = 0; i < 64; ++i) long_name += "abc.";
  long_name += "com";  // 259 characters
  CHECK_FALSE(normalize_name(long_name));
  CHECK_FALSE(normalize_name("xn--zzzz.example"));  // invalid punycode
  CHECK_FALSE(normalize_name(std::string("a\0b.example", 11)));
}

TEST_CASE("IpAddress parse and to_string") {
  auto v4 = IpAddress::parse("192.0.2.7");
  REQUIRE(v4);
  CHECK(v4->family == AF_INET);
  CHECK(v4->bytes[0] == 192);
  CHECK(v4->bytes[3] == 7);
  CHECK(v4->to_string() == "192.0.2.7");

  auto v6 = IpAddress::parse("2001:DB8:0:0::1");
  REQUIRE(v6);
  CHECK(v6->family == AF_INET6);
  CHECK(v6->bytes[0] == 0x20);
  CHECK(v6->bytes[15] == 1);
  CHECK(v6->to_string() == "2001:db8::1");

  auto bracketed = IpAddress::parse("[::1]");
  REQUIRE(bracketed);
  CHECK(bracketed->to_string() == "::1");

  auto mapped = IpAddress::parse("::ffff:10.1.2.3");
  REQUIRE(mapped);
  CHECK(mapped->family == AF_INET);
  CHECK(mapped->to_string() == "10.1.2.3");

  CHECK(IpAddress{}.to_string().empty());
  for (const char* bad : {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "::g", "1.2.3.4/8",
                          "fe80::1%eth0", "example.com", "[1.2.3.4", " 1.2.3.4"}) {
    INFO(bad);
    CHECK_FALSE(IpAddress::parse(bad));
  }
}

TEST_CASE("first matching rule wins, otherwise the default") {
  auto p = parse_ok(R"(
[policy]
default = "block"
[[rule]]
name = "first"
action = "bypass"
domains = [".example.com"]
[[rule]]
name = "second"
action = "inspect"
domains = ["www.example.com", "other.example"]
)");
  CHECK(p->default_action() == Action::block);
  CHECK(who(*p, "www.example.com") == "first");
  CHECK(decide(*p, Q{"www.example.com"}).action == Action::bypass);
  CHECK(who(*p, "other.example") == "second");
  CHECK(decide(*p, Q{"other.example"}).action == Action::inspect);
  Decision d = decide(*p, Q{"unlisted.example"});
  CHECK(d.rule == nullptr);
  CHECK(d.action == Action::block);

  REQUIRE(p->rules().size() == 2);
  CHECK(p->rules()[0].index == 0);
  CHECK(p->rules()[1].index == 1);
  CHECK(p->rules()[1].line == 8);
  CHECK(p->rules()[1].file == kFile);
  CHECK(p->rules()[1].action == Action::inspect);
}

TEST_CASE("a later rule is reached when an earlier one's other conditions fail") {
  auto p = parse_ok(R"(
[[rule]]
name = "a"
action = "block"
domains = ["x.example"]
ports = [8443]
[[rule]]
name = "b"
action = "bypass"
domains = [".example"]
)");
  CHECK(who(*p, Q{"x.example", 8443}) == "a");
  CHECK(who(*p, Q{"x.example", 443}) == "b");
}

TEST_CASE("the default defaults to inspect, auto_bypass to true") {
  auto p = parse_ok("");
  CHECK(p->default_action() == Action::inspect);
  CHECK(p->auto_bypass_enabled());
  CHECK(p->rules().empty());
  CHECK(decide(*p, Q{"example.com"}).action == Action::inspect);
  auto q = parse_ok("[policy]\nauto_bypass = false\ndefault = \"bypass\"\n");
  CHECK_FALSE(q->auto_bypass_enabled());
  CHECK(decide(*q, Q{"example.com"}).action == Action::bypass);
}

TEST_CASE("exact, wildcard, suffix and apex") {
  auto p = parse_ok(R"(
[[rule]]
name = "exact"
action = "block"
domains = ["exact.example"]
[[rule]]
name = "wild"
action = "block"
domains = ["*.wild.example"]
[[rule]]
name = "suffix"
action = "block"
domains = [".suffix.example"]
)");
  CHECK(who(*p, "exact.example") == "exact");
  CHECK(who(*p, "www.exact.example") == "default");
  CHECK(who(*p, "xexact.example") == "default");

  CHECK(who(*p, "www.wild.example") == "wild");
  CHECK(who(*p, "wild.example") == "default");
  CHECK(who(*p, "a.b.wild.example") == "default");
  CHECK(who(*p, "xwild.example") == "default");

  CHECK(who(*p, "suffix.example") == "suffix");
  CHECK(who(*p, "a.suffix.example") == "suffix");
  CHECK(who(*p, "a.b.c.suffix.example") == "suffix");
  CHECK(who(*p, "xsuffix.example") == "default");
  CHECK(who(*p, "example") == "default");
}

TEST_CASE("several pattern kinds for one base in one or more rules") {
  auto p = parse_ok(R"(
[[rule]]
name = "apex"
action = "bypass"
domains = ["example.org", "*.example.org"]
[[rule]]
name = "deep"
action = "block"
domains = [".example.org", "example.org"]
)");
  CHECK(who(*p, "example.org") == "apex");
  CHECK(who(*p, "www.example.org") == "apex");
  CHECK(who(*p, "a.www.example.org") == "deep");
  CHECK(p->name_count() == 4);
}

TEST_CASE("a TLD-level suffix and wildcard") {
  auto p = parse_ok(R"(
[[rule]]
name = "wild-tld"
action = "block"
domains = ["*.test"]
[[rule]]
name = "suffix-tld"
action = "bypass"
domains = [".internal"]
)");
  CHECK(who(*p, "a.test") == "wild-tld");
  CHECK(who(*p, "a.b.test") == "default");
  CHECK(who(*p, "test") == "default");
  CHECK(who(*p, "x.y.internal") == "suffix-tld");
  CHECK(who(*p, "internal") == "suffix-tld");
}

TEST_CASE("case and trailing dots, in patterns and queries") {
  auto p = parse_ok(R"(
[[rule]]
name = "r"
action = "block"
domains = ["MiXeD.Example.", "*.WILD.example", ".Suffix.EXAMPLE."]
)");
  CHECK(who(*p, "mixed.example") == "r");
  CHECK(who(*p, "MIXED.EXAMPLE") == "r");
  CHECK(who(*p, "mixed.example.") == "r");
  CHECK(who(*p, "MiXeD.eXaMpLe.") == "r");
  CHECK(who(*p, "Www.Wild.Example") == "r");
  CHECK(who(*p, "A.B.SUFFIX.example.") == "r");
  CHECK(who(*p, "mixed.example..") == "default");
}

TEST_CASE("international names: U-label patterns and queries meet A-labels") {
  auto p = parse_ok(R"(
[[rule]]
name = "u-pattern"
action = "block"
domains = ["bücher.example", ".münchen.example"]
[[rule]]
name = "a-pattern"
action = "bypass"
domains = ["xn--caf-dma.example", "*.XN--STRAE-OQA.example"]
)");
  CHECK(who(*p, "xn--bcher-kva.example") == "u-pattern");
  CHECK(who(*p, "bücher.example") == "u-pattern");
  CHECK(who(*p, "BÜCHER.example.") == "u-pattern");
  CHECK(who(*p, "www.xn--mnchen-3ya.example") == "u-pattern");
  CHECK(who(*p, "www.münchen.example") == "u-pattern");
  CHECK(who(*p, "café.example") == "a-pattern");
  CHECK(who(*p, "xn--caf-dma.example") == "a-pattern");
  CHECK(who(*p, "shop.straße.example") == "a-pattern");
  CHECK(who(*p, "buecher.example") == "default");
}

TEST_CASE("invalid query names match no name rule") {
  auto p = parse_ok(R"(
[[rule]]
name = "named"
action = "block"
domains = [".example.com"]
[[rule]]
name = "catch-all"
action = "bypass"
)");
  CHECK(who(*p, "a..example.com") == "catch-all");
  CHECK(who(*p, ".example.com") == "catch-all");
  CHECK(who(*p, "a b.example.com") == "catch-all");
  CHECK(who(*p, "..") == "catch-all");
  CHECK(who(*p, std::string(300, 'a') + ".example.com") == "catch-all");
  CHECK(who(*p, std::string(64, 'a') + ".example.com") == "catch-all");
  CHECK(who(*p, "\xff.example.com") == "catch-all");
}

TEST_CASE("ports, single and ranges") {
  auto p = parse_ok(R"(
[[rule]]
name = "ports"
action = "bypass"
ports = [443, "8000-8100", "9000", 65535]
)");
  CHECK(who(*p, Q{"a.example", 443}) == "ports");
  CHECK(who(*p, Q{"a.example", 444}) == "default");
  CHECK(who(*p, Q{"a.example", 8000}) == "ports");
  CHECK(who(*p, Q{"a.example", 8050}) == "ports");
  CHECK(who(*p, Q{"a.example", 8100}) == "ports");
  CHECK(who(*p, Q{"a.example", 8101}) == "default");
  CHECK(who(*p, Q{"a.example", 7999}) == "default");
  CHECK(who(*p, Q{"a.example", 9000}) == "ports");
  CHECK(who(*p, Q{"a.example", 65535}) == "ports");
  CHECK(who(*p, Q{"a.example", 0}) == "default");  // unknown port
  CHECK(who(*p, Q{"", 443}) == "ports");           // no name condition: no name needed
}

TEST_CASE("destination CIDRs, IPv4 and IPv6") {
  auto p = parse_ok(R"(
[[rule]]
name = "dst"
action = "block"
dst = ["198.51.100.0/24", "2001:db8::/32", "203.0.113.7", "10.0.0.0/9", "2001:db8:ffff::1/128"]
)");
  CHECK(who(*p, Q{"", 443, "198.51.100.1"}) == "dst");
  CHECK(who(*p, Q{"", 443, "198.51.100.255"}) == "dst");
  CHECK(who(*p, Q{"", 443, "198.51.101.1"}) == "default");
  CHECK(who(*p, Q{"", 443, "203.0.113.7"}) == "dst");
  CHECK(who(*p, Q{"", 443, "203.0.113.8"}) == "default");
  CHECK(who(*p, Q{"", 443, "10.127.255.255"}) == "dst");  // /9: 10.0.0.0-10.127.255.255
  CHECK(who(*p, Q{"", 443, "10.128.0.0"}) == "default");
  CHECK(who(*p, Q{"", 443, "2001:db8:1234::5"}) == "dst");
  CHECK(who(*p, Q{"", 443, "2001:db9::1"}) == "default");
  CHECK(who(*p, Q{"", 443, "::ffff:198.51.100.9"}) == "dst");  // mapped, as IPv4
  CHECK(who(*p, Q{"x.example", 443}) == "default");            // no address: no match
}

TEST_CASE("client CIDRs, mapped addresses compare as IPv4") {
  auto p = parse_ok(R"(
[[rule]]
name = "lan"
action = "bypass"
clients = ["10.0.0.0/8", "::1", "fd00::/8"]
[[rule]]
name = "mapped-prefix"
action = "block"
clients = ["::ffff:192.168.0.0/112"]
[[rule]]
name = "all-v6"
action = "inspect"
clients = ["::/0"]
)");
  CHECK(who(*p, Q{"a.example", 443, "", "10.9.8.7"}) == "lan");
  CHECK(who(*p, Q{"a.example", 443, "", "11.0.0.1"}) == "default");
  CHECK(who(*p, Q{"a.example", 443, "", "::1"}) == "lan");
  CHECK(who(*p, Q{"a.example", 443, "", "fd12:3456::1"}) == "lan");
  CHECK(who(*p, Q{"a.example", 443, "", "::2"}) == "all-v6");
  CHECK(who(*p, Q{"a.example", 443, "", "192.168.3.4"}) == "mapped-prefix");
  CHECK(who(*p, Q{"a.example", 443, "", "192.169.3.4"}) == "default");

  // An AF_INET6 address holding a mapped IPv4 address, as a caller might
  // build from a sockaddr_in6 on a dual-stack socket.
  IpAddress raw;
  raw.family = AF_INET6;
  raw.bytes[10] = 0xff;
  raw.bytes[11] = 0xff;
  raw.bytes[12] = 10;
  raw.bytes[13] = 1;
  raw.bytes[14] = 2;
  raw.bytes[15] = 3;
  Query q;
  q.server_name = "a.example";
  q.client_ip = raw;
  Decision d = p->decide(q);
  REQUIRE(d.rule);
  CHECK(d.rule->name == "lan");
  q.client_ip.reset();
  CHECK(p->decide(q).rule == nullptr);  // no client address: no match
}

TEST_CASE("users and groups") {
  auto p = parse_ok(R"(
[[rule]]
name = "users"
action = "block"
users = ["alice", "Bob"]
[[rule]]
name = "groups"
action = "inspect"
groups = ["supervised", "traders"]
[[rule]]
name = "both"
action = "bypass"
users = ["carol"]
groups = ["it"]
)");
  CHECK(who(*p, Q("a.example").as("alice")) == "users");
  CHECK(who(*p, Q("a.example").as("bob")) == "users");  // ASCII case-insensitive
  CHECK(who(*p, Q("a.example").as("mallory")) == "default");
  CHECK(who(*p, Q("a.example").as("")) == "default");
  CHECK(who(*p, Q("a.example").as("dave", {"staff", "traders"})) == "groups");
  CHECK(who(*p, Q("a.example").as("", {"Supervised"})) == "groups");
  CHECK(who(*p, Q("a.example").as("", {"staff"})) == "default");
  CHECK(who(*p, Q("a.example").as("carol", {"it"})) == "both");
  CHECK(who(*p, Q("a.example").as("carol")) == "default");
  CHECK(who(*p, Q("a.example").as("erin", {"it"})) == "default");
}

TEST_CASE("a rule with no conditions matches everything, named or not") {
  auto p = parse_ok(R"(
[[rule]]
name = "named"
action = "bypass"
domains = ["a.example"]
[[rule]]
action = "block"
[[rule]]
name = "unreachable"
action = "inspect"
domains = ["b.example"]
)");
  CHECK(who(*p, "a.example") == "named");
  CHECK(who(*p, "b.example") == "rule 2");
  CHECK(who(*p, "") == "rule 2");
  CHECK(decide(*p, Q{}).action == Action::block);
  CHECK(who(*p, Q{"", 0}) == "rule 2");
}

TEST_CASE("a query without a name never matches a rule with a name condition") {
  auto p = parse_ok(R"(
[[rule]]
name = "names"
action = "block"
domains = [".example", "*.example"]
ports = [443]
[[rule]]
name = "port-only"
action = "bypass"
ports = [443]
)");
  CHECK(who(*p, Q{"", 443}) == "port-only");
  CHECK(who(*p, Q{".", 443}) == "port-only");
  CHECK(who(*p, Q{"a.example", 443}) == "names");
}

TEST_CASE("default rule names count across files") {
  TempDir dir;
  auto a = dir.write("a.toml", "[[rule]]\naction = \"block\"\ndomains = [\"a.example\"]\n"
                               "[[rule]]\nname = \"named\"\naction = \"block\"\ndomains = [\"b.example\"]\n");
  auto b = dir.write("b.toml", "[policy]\ndefault = \"bypass\"\n[[rule]]\naction = \"inspect\"\n"
                               "domains = [\"c.example\"]\n");
  PolicyError err;
  auto p = Policy::load({a, b}, err);
  INFO(err.message);
  REQUIRE(p);
  REQUIRE(p->rules().size() == 3);
  CHECK(p->rules()[0].name == "rule 1");
  CHECK(p->rules()[1].name == "named");
  CHECK(p->rules()[2].name == "rule 3");
  CHECK(p->rules()[2].file == b);
  CHECK(p->rules()[2].line == 3);
  CHECK(p->rules()[2].index == 2);
  CHECK(p->default_action() == Action::bypass);
  CHECK(who(*p, "c.example") == "rule 3");
  CHECK(who(*p, "d.example") == "default");
  REQUIRE(p->sources().size() == 2);
  CHECK(p->sources()[0].path == a);
  CHECK(p->sources()[1].path == b);
}

TEST_CASE("duplicate rule names are allowed") {
  auto p = parse_ok(R"(
[[rule]]
name = "same"
action = "block"
domains = ["a.example"]
[[rule]]
name = "same"
action = "bypass"
domains = ["b.example"]
)");
  CHECK(decide(*p, Q{"a.example"}).action == Action::block);
  CHECK(decide(*p, Q{"b.example"}).action == Action::bypass);
}

TEST_CASE("domain-list files: comments, blanks, relative paths, sources") {
  TempDir dir;
  const std::string list1 =
      "a.example\n# c\n.b.example # trailing\n\n*.c.example\n";  // sha256 known below
  dir.write("lists/one.txt", list1);
  dir.write("lists/two.txt",
            "\xEF\xBB\xBF# a BOM, CRLF line ends, tabs\r\n\t d.example\t\r\n   \r\nbücher.example\r\n"
            "# only a comment\nlast.example");  // no final newline
  dir.write("lists/empty.txt", "# nothing yet\n\n");
  const std::string toml =
      "[[rule]]\naction = \"block\"\ndomains_file = \"lists/one.txt\"\n"
      "[[rule]]\nname = \"two\"\naction = \"bypass\"\ndomains = [\"inline.example\"]\n"
      "domains_files = [\"lists/two.txt\", \"./lists/one.txt\"]\n"
      "[[rule]]\nname = \"empty\"\naction = \"block\"\ndomains_file = \"lists/empty.txt\"\n";
  auto file = dir.write("p.toml", toml);
  PolicyError err;
  auto p = Policy::load({file}, err);
  INFO(err.message);
  REQUIRE(p);

  CHECK(who(*p, "a.example") == "rule 1");
  CHECK(who(*p, "x.y.b.example") == "rule 1");
  CHECK(who(*p, "b.example") == "rule 1");
  CHECK(who(*p, "c.example") == "default");
  CHECK(who(*p, "w.c.example") == "rule 1");
  CHECK(who(*p, "d.example") == "two");
  CHECK(who(*p, "xn--bcher-kva.example") == "two");
  CHECK(who(*p, "last.example") == "two");
  CHECK(who(*p, "inline.example") == "two");
  // An empty list matches nothing (it does not turn into a catch-all).
  CHECK(who(*p, "anything.example") == "default");
  CHECK(who(*p, "") == "default");

  // name_count: every (rule, pattern) compiled; one.txt counts for both rules.
  CHECK(p->name_count() == 3 + 1 + 3 + 3);
  const auto& src = p->sources();
  REQUIRE(src.size() == 4);  // the TOML file, then each list once, in order of first use
  CHECK(src[0].path == file);
  CHECK(src[0].names == 1);
  CHECK(src[1].path == (dir.path / "lists/one.txt").string());
  CHECK(src[1].names == 3);
  CHECK(src[1].sha256 == "658dd821a3b31b7b6ef591e7153f345589e563015fc7542e25deffd0a00b9cfa");
  CHECK(src[2].path == (dir.path / "lists/two.txt").string());
  CHECK(src[2].names == 3);
  CHECK(src[2].sha256.size() == 64);
  CHECK(src[3].names == 0);
  CHECK(src[0].sha256 != src[1].sha256);
}

TEST_CASE("sources() sha256 of a parsed text") {
  auto p = parse_ok("[[rule]]\naction = \"block\"\ndomains = [\"x.example\"]\n");
  REQUIRE(p->sources().size() == 1);
  CHECK(p->sources()[0].path == kFile);
  CHECK(p->sources()[0].sha256 == "bc16a61d05ad44e540bc3482ed6c03c78a434d98ce6bbadcbad05f9eac185956");
  CHECK(p->sources()[0].names == 1);
  CHECK(p->name_count() == 1);
}

TEST_CASE("rule options are parsed into RuleOptions") {
  auto p = parse_ok(R"(
[[rule]]
name = "opts"
action = "inspect"
domains = ["a.example"]
archive = true
hooks = ["pcap", "icap"]
icap = ["dlp", "av-2"]
on_invalid = "forward-untrusted"
auto_bypass = false
[[rule]]
name = "none"
action = "inspect"
hooks = []
on_invalid = "block"
archive = false
)");
  const RuleOptions& o = p->rules()[0].options;
  CHECK(o.archive == true);
  REQUIRE(o.hooks);
  CHECK(*o.hooks == std::vector<std::string>{"pcap", "icap"});
  REQUIRE(o.icap);
  CHECK(*o.icap == std::vector<std::string>{"dlp", "av-2"});
  CHECK_FALSE(p->rules()[1].options.icap);
  CHECK(o.on_invalid == sightline::tls::OnInvalid::forward_untrusted);
  CHECK(o.auto_bypass == false);
  const RuleOptions& n = p->rules()[1].options;
  CHECK(n.archive == false);
  REQUIRE(n.hooks);
  CHECK(n.hooks->empty());
  CHECK(n.on_invalid == sightline::tls::OnInvalid::block);
  CHECK_FALSE(n.auto_bypass);

  auto q = parse_ok("[[rule]]\naction = \"bypass\"\n");
  const RuleOptions& u = q->rules()[0].options;
  CHECK_FALSE(u.archive);
  CHECK_FALSE(u.hooks);
  CHECK_FALSE(u.on_invalid);
  CHECK_FALSE(u.auto_bypass);
}

TEST_CASE("errors in the TOML: file:line:col and the key") {
  const std::string f = kFile;
  expect_error("[policy\n", f + ":1:8: Error while parsing table header: expected ']', saw '\\n'");
  expect_error("foo = 1\n", f + ":1:1: key 'foo': unknown key");
  expect_error("[policy]\ndefault = \"allow\"\n",
               f + ":2:11: key 'policy.default': expected one of \"inspect\", \"bypass\", \"block\"");
  expect_error("[policy]\nauto_bypass = \"yes\"\n",
               f + ":2:15: key 'policy.auto_bypass': expected true or false");
  expect_error("[policy]\ndefaults = \"block\"\n", f + ":2:1: key 'policy.defaults': unknown key");
  expect_error("policy = 1\n", f + ":1:10: key 'policy': expected a table");
  expect_error("[rule]\naction = \"block\"\n", f + ":1:1: key 'rule': expected [[rule]] tables");
  expect_error("rule = [1]\n", f + ":1:8: key 'rule': expected [[rule]] tables");

  expect_error("[[rule]]\nname = \"x\"\naction = \"block\"\n\n[[rule]]\ndomains = [\"a.example\"]\n",
               f + ":5:1: key 'rule.action': missing");
  expect_error("[[rule]]\naction = \"allow\"\n",
               f + ":2:10: key 'rule.action': expected one of \"inspect\", \"bypass\", \"block\"");
  expect_error("[[rule]]\naction = 1\n",
               f + ":2:10: key 'rule.action': expected one of \"inspect\", \"bypass\", \"block\"");
  expect_error("[[rule]]\naction = \"block\"\ndomain = [\"a.example\"]\n",
               f + ":3:1: key 'rule.domain': unknown key");
  expect_error("[[rule]]\naction = \"block\"\nname = \"\"\n",
               f + ":3:8: key 'rule.name': expected a non-empty string");
  expect_error("[[rule]]\naction = \"block\"\nname = 3\n",
               f + ":3:8: key 'rule.name': expected a non-empty string");
}

TEST_CASE("errors in domain patterns") {
  const std::string f = kFile;
  auto rule = [](const std::string& domains) {
    return "[[rule]]\naction = \"block\"\ndomains = " + domains + "\n";
  };
  expect_error(rule("\"a.example\""), f + ":3:11: key 'rule.domains': expected a non-empty array of strings");
  expect_error(rule("[]"), f + ":3:11: key 'rule.domains': expected a non-empty array of strings");
  expect_error(rule("[\"a.example\", 1]"), f + ":3:25: key 'rule.domains': expected non-empty strings");
  expect_error(rule("[\"\"]"), f + ":3:12: key 'rule.domains': expected non-empty strings");
  expect_error(rule("[\"a..example\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"a..example\": empty label");
  expect_error(rule("[\"a.*.example\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"a.*.example\": '*' is allowed "
                   "only as the whole first label, as in \"*.example.com\"");
  expect_error(rule("[\"*example.com\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"*example.com\": '*' is allowed "
                   "only as the whole first label, as in \"*.example.com\"");
  expect_error(rule("[\"*.*.example\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"*.*.example\": '*' is allowed "
                   "only as the whole first label, as in \"*.example.com\"");
  expect_error(rule("[\"*\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"*\": '*' is allowed "
                   "only as the whole first label, as in \"*.example.com\"");
  expect_error(rule("[\"*.\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"*.\": no domain after \"*.\"");
  expect_error(rule("[\".\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \".\": no domain after \".\"");
  expect_error(rule("[\"..example\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"..example\": empty label");
  expect_error(rule("[\"exa mple.com\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"exa mple.com\": invalid "
                   "character '\\x20'");
  expect_error(rule("[\"a.example\",\n  \"https://a.example/\"]"),
               f + ":4:3: key 'rule.domains': invalid domain pattern \"https://a.example/\": invalid "
                   "character ':'");
  expect_error(rule("[\"" + std::string(64, 'a') + ".example\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"" + std::string(64, 'a') +
                   ".example\": label longer than 63 characters");
  expect_error(rule("[\"192.0.2.7\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"192.0.2.7\": an IP address is "
                   "not a name; use dst = [\"192.0.2.7\"] for destination addresses");
  expect_error(rule("[\"[::1]\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"[::1]\": invalid character '['");
  expect_error(rule("[\"xn--zzzz.example\"]"),
               f + ":3:12: key 'rule.domains': invalid domain pattern \"xn--zzzz.example\": not a "
                   "valid internationalized name (string contains invalid punycode data)");
}

TEST_CASE("errors in ports, addresses, identities and options") {
  const std::string f = kFile;
  auto rule = [](const std::string& line) { return "[[rule]]\naction = \"block\"\n" + line + "\n"; };
  const std::string port_msg =
      "key 'rule.ports': expected a port from 1 to 65535 or a range such as \"8000-8100\"";
  expect_error(rule("ports = [0]"), f + ":3:10: " + port_msg);
  expect_error(rule("ports = [443, 65536]"), f + ":3:15: " + port_msg);
  expect_error(rule("ports = [\"9-1\"]"), f + ":3:10: " + port_msg);
  expect_error(rule("ports = [\"80-\"]"), f + ":3:10: " + port_msg);
  expect_error(rule("ports = [\"http\"]"), f + ":3:10: " + port_msg);
  expect_error(rule("ports = [443.0]"), f + ":3:10: " + port_msg);
  expect_error(rule("ports = [-1]"), f + ":3:10: " + port_msg);
  expect_error(rule("ports = 443"), f + ":3:9: key 'rule.ports': expected a non-empty array of ports");
  expect_error(rule("ports = []"), f + ":3:9: key 'rule.ports': expected a non-empty array of ports");

  const std::string addr_msg =
      "expected an IP address or CIDR such as \"192.0.2.0/24\" or \"2001:db8::/32\"";
  expect_error(rule("dst = [\"example.com\"]"), f + ":3:8: key 'rule.dst': \"example.com\": " + addr_msg);
  expect_error(rule("dst = [\"10.0.0.0/33\"]"),
               f + ":3:8: key 'rule.dst': \"10.0.0.0/33\": prefix length larger than 32");
  expect_error(rule("dst = [\"2001:db8::/129\"]"),
               f + ":3:8: key 'rule.dst': \"2001:db8::/129\": prefix length larger than 128");
  expect_error(rule("dst = [\"10.0.0.0/\"]"),
               f + ":3:8: key 'rule.dst': \"10.0.0.0/\": expected a prefix length after '/'");
  expect_error(rule("dst = [\"10.0.0.0/x\"]"),
               f + ":3:8: key 'rule.dst': \"10.0.0.0/x\": expected a prefix length after '/'");
  expect_error(rule("dst = [\"198.51.100.1/24\"]"),
               f + ":3:8: key 'rule.dst': \"198.51.100.1/24\": address has bits set after the /24 "
                   "prefix (did you mean \"198.51.100.0/24\"?)");
  expect_error(rule("clients = [\"2001:db8::1/32\"]"),
               f + ":3:12: key 'rule.clients': \"2001:db8::1/32\": address has bits set after the "
                   "/32 prefix (did you mean \"2001:db8::/32\"?)");
  expect_error(rule("clients = [\"::ffff:10.0.0.0/64\"]"),
               f + ":3:12: key 'rule.clients': \"::ffff:10.0.0.0/64\": an IPv4-mapped prefix needs a "
                   "length of at least 96");
  expect_error(rule("clients = [\"::ffff:10.1.0.0/104\"]"),
               f + ":3:12: key 'rule.clients': \"::ffff:10.1.0.0/104\": address has bits set after the "
                   "/104 prefix (did you mean \"::ffff:10.0.0.0/104\"?)");
  expect_error(rule("clients = \"10.0.0.0/8\""),
               f + ":3:11: key 'rule.clients': expected a non-empty array of strings");

  expect_error(rule("users = []"), f + ":3:9: key 'rule.users': expected a non-empty array of strings");
  expect_error(rule("users = [\"\"]"), f + ":3:10: key 'rule.users': expected non-empty strings");
  expect_error(rule("groups = [1]"), f + ":3:11: key 'rule.groups': expected non-empty strings");

  expect_error(rule("archive = \"yes\""), f + ":3:11: key 'rule.archive': expected true or false");
  expect_error(rule("auto_bypass = 1"), f + ":3:15: key 'rule.auto_bypass': expected true or false");
  expect_error(rule("on_invalid = \"allow\""),
               f + ":3:14: key 'rule.on_invalid': expected one of \"block\", \"forward-untrusted\"");
  expect_error(rule("hooks = \"pcap\""), f + ":3:9: key 'rule.hooks': expected an array of strings");
  expect_error(rule("hooks = [\"PCAP\"]"),
               f + ":3:10: key 'rule.hooks': \"PCAP\": hook names are lower-case letters, digits, '-' "
                   "and '_'");
  expect_error(rule("hooks = [\"pcap\", \"pcap\"]"),
               f + ":3:18: key 'rule.hooks': \"pcap\" is listed twice");
  expect_error(rule("icap = [\"DLP\"]"),
               f + ":3:9: key 'rule.icap': \"DLP\": ICAP service names are lower-case letters, digits, "
                   "'-' and '_'");
  expect_error(rule("icap = [\"av\", \"av\"]"), f + ":3:15: key 'rule.icap': \"av\" is listed twice");
}

TEST_CASE("errors in list files and file access") {
  TempDir dir;
  dir.write("lists/bad.txt", "# header\n\ngood.example\nbad..example # oops\n");
  auto bad_list = (dir.path / "lists/bad.txt").string();

  PolicyError err;
  auto toml = dir.write("p.toml", "[[rule]]\naction = \"block\"\ndomains_file = \"lists/bad.txt\"\n");
  CHECK_FALSE(Policy::load({toml}, err));
  CHECK(err.message == bad_list + ":4: invalid domain pattern \"bad..example\": empty label");

  dir.write("lists/star.txt", "ok.example\nfoo.*.example\n");
  toml = dir.write("p2.toml", "[[rule]]\naction = \"block\"\ndomains_files = [\"lists/star.txt\"]\n");
  CHECK_FALSE(Policy::load({toml}, err));
  CHECK(err.message == (dir.path / "lists/star.txt").string() +
                           ":2: invalid domain pattern \"foo.*.example\": '*' is allowed only as the "
                           "whole first label, as in \"*.example.com\"");

  toml = dir.write("p3.toml", "[[rule]]\naction = \"block\"\ndomains_file = \"lists/missing.txt\"\n");
  CHECK_FALSE(Policy::load({toml}, err));
  CHECK(err.message == toml + ":3:16: key 'rule.domains_file': cannot read " +
                           (dir.path / "lists/missing.txt").string() + ": No such file or directory");

  toml = dir.write("p4.toml", "[[rule]]\naction = \"block\"\ndomains_files = [\"lists/bad.txt\",\n"
                              "  \"nope.txt\"]\n");
  CHECK_FALSE(Policy::load({toml}, err));
  CHECK(err.message == bad_list + ":4: invalid domain pattern \"bad..example\": empty label");
  dir.write("lists/bad.txt", "fixed.example\n");
  CHECK_FALSE(Policy::load({toml}, err));
  CHECK(err.message == toml + ":4:3: key 'rule.domains_files': cannot read " +
                           (dir.path / "nope.txt").string() + ": No such file or directory");

  toml = dir.write("p5.toml", "[[rule]]\naction = \"block\"\ndomains_file = \"lists\"\n");
  CHECK_FALSE(Policy::load({toml}, err));
  CHECK(err.message == toml + ":3:16: key 'rule.domains_file': cannot read " +
                           (dir.path / "lists").string() + ": Is a directory");

  toml = dir.write("p6.toml", "[[rule]]\naction = \"block\"\ndomains_file = 7\n");
  CHECK_FALSE(Policy::load({toml}, err));
  CHECK(err.message == toml + ":3:16: key 'rule.domains_file': expected a non-empty string");

  toml = dir.write("p7.toml", "[[rule]]\naction = \"block\"\ndomains_files = []\n");
  CHECK_FALSE(Policy::load({toml}, err));
  CHECK(err.message == toml + ":3:17: key 'rule.domains_files': expected a non-empty array of strings");

  auto missing = (dir.path / "absent.toml").string();
  CHECK_FALSE(Policy::load({missing}, err));
  CHECK(err.message == missing + ": cannot read policy file: No such file or directory");

  // A second [policy] table, in another file.
  auto a = dir.write("a.toml", "# first\n[policy]\ndefault = \"block\"\n");
  auto b = dir.write("b.toml", "[[rule]]\naction = \"block\"\n\n[policy]\ndefault = \"bypass\"\n");
  CHECK_FALSE(Policy::load({a, b}, err));
  CHECK(err.message == b + ":4:1: key 'policy': [policy] is already set in " + a + ":2");
  // Either file alone is fine, and so is the pair without the duplicate.
  CHECK(Policy::load({b}, err));
  auto c = dir.write("c.toml", "[[rule]]\naction = \"bypass\"\n");
  CHECK(Policy::load({a, c}, err));
  // An empty list of files: the built-in default.
  auto none = Policy::load({}, err);
  REQUIRE(none);
  CHECK(none->default_action() == Action::inspect);
}

TEST_CASE("list file paths resolve relative to the naming TOML file, absolute ones as is") {
  TempDir dir;
  auto list = dir.write("sub/names.txt", "abs.example\n");
  dir.write("conf/sub/names.txt", "rel.example\n");
  auto toml = dir.write("conf/p.toml", "[[rule]]\naction = \"block\"\ndomains_files = [\"sub/names.txt\", \"" +
                                           list + "\"]\n");
  PolicyError err;
  auto p = Policy::load({toml}, err);
  INFO(err.message);
  REQUIRE(p);
  CHECK(who(*p, "abs.example") == "rule 1");
  CHECK(who(*p, "rel.example") == "rule 1");
  // Policy::parse resolves against the directory of the name it is given.
  auto q = Policy::parse("[[rule]]\naction = \"block\"\ndomains_file = \"sub/names.txt\"\n",
                         (dir.path / "conf/virtual.toml").string(), err);
  INFO(err.message);
  REQUIRE(q);
  CHECK(who(*q, "rel.example") == "rule 1");
}

TEST_CASE("a large list: decisions stay right") {
  TempDir dir;
  std::string list;
  for (int i = 0; i < 20000; ++i) list += "host" + std::to_string(i) + ".bulk.example\n";
  list += ".deep.example\n*.wild.example\n";
  dir.write("big.txt", list);
  auto toml = dir.write("p.toml",
                        "[[rule]]\nname = \"early\"\naction = \"inspect\"\ndomains = [\"host77.bulk.example\"]\n"
                        "[[rule]]\nname = \"big\"\naction = \"bypass\"\ndomains_file = \"big.txt\"\n"
                        "[[rule]]\nname = \"late\"\naction = \"block\"\ndomains = [\".bulk.example\"]\n");
  PolicyError err;
  auto p = Policy::load({toml}, err);
  INFO(err.message);
  REQUIRE(p);
  CHECK(p->name_count() == 20004);
  CHECK(who(*p, "host0.bulk.example") == "big");
  CHECK(who(*p, "host19999.bulk.example") == "big");
  CHECK(who(*p, "host77.bulk.example") == "early");
  CHECK(who(*p, "host20000.bulk.example") == "late");
  CHECK(who(*p, "a.b.deep.example") == "big");
  CHECK(who(*p, "x.wild.example") == "big");
  CHECK(who(*p, "y.x.wild.example") == "default");
}

TEST_CASE("decide is safe to call from many threads") {
  auto p = parse_ok(R"(
[[rule]]
name = "a"
action = "block"
domains = [".a.example"]
ports = [443]
[[rule]]
name = "b"
action = "bypass"
clients = ["10.0.0.0/8"]
)");
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        if (decide(*p, Q{"X.A.Example", 443}).action != Action::block) ++wrong;
        if (decide(*p, Q{"bücher.example", 443, "", "10.1.1.1"}).action != Action::bypass) ++wrong;
        if (decide(*p, Q{"other.example", 443}).rule != nullptr) ++wrong;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(wrong == 0);
}

TEST_CASE("the shipped policies/default.toml") {
  const std::string path = std::string(SIGHTLINE_TEST_DATA) + "/../../policies/default.toml";
  PolicyError err;
  auto p = Policy::load({path}, err);
  INFO(err.message);
  REQUIRE(p);
  CHECK(p->default_action() == Action::inspect);
  CHECK(p->auto_bypass_enabled());
  CHECK(p->sources().size() == 4);  // the file and its three lists
  for (const auto& s : p->sources()) {
    INFO(s.path);
    CHECK(s.sha256.size() == 64);
  }
  CHECK(p->name_count() > 100);

  CHECK(decide(*p, Q{"www.example.com"}).action == Action::inspect);
  CHECK(decide(*p, Q{"www.example.com"}).rule == nullptr);
  CHECK(decide(*p, Q{"block.example"}).action == Action::block);
  CHECK(decide(*p, Q{"www.block.example"}).action == Action::block);
  CHECK(decide(*p, Q{"xn--bcher-kva.example"}).action == Action::block);
  CHECK(decide(*p, Q{"a.example", 443, "203.0.113.9"}).action == Action::block);
  CHECK(who(*p, "www.nhs.uk") == "health");
  CHECK(decide(*p, Q{"www.nhs.uk"}).action == Action::bypass);
  CHECK(who(*p, "secure.chase.com") == "finance");
  CHECK(who(*p, "www.paypal.com") == "finance");
  CHECK(who(*p, "courier.push.apple.com") == "pinned-apps");
  CHECK(who(*p, "fe3.delivery.mp.microsoft.com") == "pinned-apps");
  CHECK(who(*p, Q{"imap.example.net", 993}) == "mail-protocols");
  CHECK(who(*p, Q{"www.example.net", 443, "", "198.51.100.20"}) == "unmanaged-devices");
  CHECK(who(*p, Q{"www.example.net", 80, "", "198.51.100.20"}) == "default");

  // Supervised users' chat is inspected and archived; others' is not in scope.
  Decision d = decide(*p, Q("app.slack.com").as("rep1", {"supervised"}));
  REQUIRE(d.rule);
  CHECK(d.rule->name == "supervised-communications");
  CHECK(d.action == Action::inspect);
  CHECK(d.rule->options.archive == true);
  CHECK(d.rule->options.auto_bypass == false);
  CHECK(who(*p, Q("app.slack.com").as("someone")) == "default");
}

TEST_CASE("uses_destination_address: only rules with dst make a named target's address matter") {
  CHECK_FALSE(parse_ok("[policy]\n[[rule]]\naction = \"block\"\ndomains = [\"a.example\"]\n"
                       "clients = [\"10.0.0.0/8\"]\nports = [443]\n")
                  ->uses_destination_address());
  CHECK(parse_ok("[policy]\n[[rule]]\naction = \"bypass\"\ndst = [\"10.0.0.0/8\"]\n")
            ->uses_destination_address());
}
