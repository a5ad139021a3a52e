// libFuzzer target for the policy loader and matcher (src/policy/policy.cc,
// names.cc): TOML text to compiled rules, then decisions.
//
// Input: up to three parts separated by NUL bytes:
//   1. the policy file (TOML);
//   2. the text of every domain-list file it names (domains_file,
//      domains_files); without this part, naming one is an error;
//   3. queries, one a line: NAME [DST [PORT [CLIENT [USER [GROUP,...]]]]],
//      "-" for an absent field; without this part a few fixed queries run.
//
// core::read_whole_file is replaced here (src/core/text_file.cc is not
// linked) so that list files come from the input: a load never touches the
// disk, whatever path the input names (/dev/zero, a FIFO...).
//
// Besides crashes: a load fails with a message or gives a policy whose rules
// are numbered in order; a decision names its rule (or the default) and
// does not change when the queried name is written in upper case or with a
// trailing dot, as the SNI and CONNECT host may be.
#include "core/text_file.h"
#include "fuzz_check.h"
#include "policy/policy.h"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

using sightline::fuzz::as_text;
using sightline::fuzz::take_part;
using namespace sightline::policy;

namespace {

std::string_view g_list;  // the current input's list part
bool g_have_list = false;

struct QueryText {
  std::string name;
  std::optional<IpAddress> dst, client;
  std::uint16_t port = 0;
  std::string user;
  std::vector<std::string> groups;
};

std::vector<std::string_view> words(std::string_view line) {
  std::vector<std::string_view> out;
  while (!line.empty()) {
    const std::size_t start = line.find_first_not_of(" \t\r");
    if (start == std::string_view::npos) break;
    line.remove_prefix(start);
    const std::size_t end = std::min(line.find_first_of(" \t\r"), line.size());
    out.push_back(line.substr(0, end));
    line.remove_prefix(end);
  }
  return out;
}

QueryText parse_query(std::string_view line) {
  QueryText q;
  const auto w = words(line);
  auto field = [&](std::size_t i) { return i < w.size() && w[i] != "-" ? w[i] : std::string_view(); };
  q.name = std::string(field(0));
  if (!field(1).empty()) q.dst = IpAddress::parse(field(1));
  unsigned port = 0;
  for (char c : field(2)) port = c >= '0' && c <= '9' ? (port * 10 + static_cast<unsigned>(c - '0')) % 65536 : port;
  q.port = static_cast<std::uint16_t>(port);
  if (!field(3).empty()) q.client = IpAddress::parse(field(3));
  q.user = std::string(field(4));
  for (std::string_view g = field(5); !g.empty();) q.groups.emplace_back(take_part(g, ','));
  return q;
}

Decision decide(const Policy& p, const QueryText& t, std::string_view name) {
  Query q;
  q.server_name = name;
  q.dst_ip = t.dst;
  q.dst_port = t.port;
  q.client_ip = t.client;
  q.user = t.user;
  q.groups = t.groups;
  const Decision d = p.decide(q);
  if (d.rule) {
    FUZZ_CHECK(d.rule->index < p.rules().size() && &p.rules()[d.rule->index] == d.rule);
    FUZZ_CHECK(d.action == d.rule->action);
  } else {
    FUZZ_CHECK(d.action == p.default_action());
  }
  return d;
}

void check_query(const Policy& p, const QueryText& t) {
  const Decision d = decide(p, t, t.name);
  std::string upper = t.name;
  for (char& c : upper)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  const Decision u = decide(p, t, upper);
  FUZZ_CHECK(u.rule == d.rule && u.action == d.action);
  if (!t.name.empty() && t.name.back() != '.') {
    const Decision dot = decide(p, t, t.name + ".");
    FUZZ_CHECK(dot.rule == d.rule && dot.action == d.action);
  }
}

const char* const kDefaultQueries[] = {
    "www.example.com 203.0.113.5 443 198.51.100.7 alice supervised,staff",
    "Block.Example. - 8443 2001:db8:6e57::1",
    "xn--bcher-kva.example 2001:db8:bad::1 993",
    "- 192.0.2.1 465 ::ffff:198.51.100.9 - supervised",
};

}  // namespace

namespace sightline::core {

// Every list file has the text of the input's second part.
bool read_whole_file(const std::string& path, std::string& out, std::string& why) {
  (void)path;
  if (!g_have_list) {
    why = std::strerror(ENOENT);
    return false;
  }
  out.assign(g_list);
  return true;
}

}  // namespace sightline::core

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view rest = as_text(data, size);
  const std::string_view toml = take_part(rest);
  g_have_list = toml.size() < size;  // a NUL followed the policy
  g_list = take_part(rest);
  const bool have_queries = toml.size() + 1 + g_list.size() < size;
  const std::string_view queries = rest;

  PolicyError err;
  const auto p = Policy::parse(toml, "fuzz/policy.toml", err);
  if (!p) {
    FUZZ_CHECK(!err.message.empty());
    return 0;
  }
  FUZZ_CHECK(!p->sources().empty() && p->sources().front().path == "fuzz/policy.toml");
  for (std::size_t i = 0; i < p->rules().size(); ++i) FUZZ_CHECK(p->rules()[i].index == i);
  (void)p->uses_destination_address();
  (void)p->auto_bypass_enabled();

  if (have_queries) {
    std::string_view lines = queries;
    while (!lines.empty()) check_query(*p, parse_query(take_part(lines, '\n')));
  } else {
    for (const char* q : kDefaultQueries) check_query(*p, parse_query(q));
  }
  return 0;
}
