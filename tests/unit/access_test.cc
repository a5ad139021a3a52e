// Access control, connection limits and private key files (issue 11).
#include "app/config.h"
#include "core/private_file.h"
#include "net/conn_limits.h"
#include "policy/access.h"

#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

using namespace sightline;

namespace {

sockaddr_storage addr(const char* ip, std::uint16_t port = 0) {
  sockaddr_storage ss{};
  if (std::string(ip).find(':') != std::string::npos) {
    auto& a = reinterpret_cast<sockaddr_in6&>(ss);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    REQUIRE(inet_pton(AF_INET6, ip, &a.sin6_addr) == 1);
  } else {
    auto& a = reinterpret_cast<sockaddr_in&>(ss);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    REQUIRE(inet_pton(AF_INET, ip, &a.sin_addr) == 1);
  }
  return ss;
}

const sockaddr& sa(const sockaddr_storage& ss) { return reinterpret_cast<const sockaddr&>(ss); }

policy::AccessRules defaults() {
  std::string why;
  auto r = policy::AccessRules::build(policy::AccessSettings{}, why);
  REQUIRE_MESSAGE(r, why);
  return std::move(*r);
}

}  // namespace

TEST_CASE("access: default clients are loopback and the private ranges") {
  auto r = defaults();
  for (const char* ok : {"127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1", "::1",
                         "fd12::1", "::ffff:10.0.0.1"})
    CHECK_MESSAGE(r.client_allowed(sa(addr(ok))), ok);
  for (const char* no : {"8.8.8.8", "172.32.0.1", "198.51.100.7", "2001:db8::1", "::ffff:8.8.8.8", "100.64.0.1"})
    CHECK_MESSAGE(!r.client_allowed(sa(addr(no))), no);
}

TEST_CASE("access: CONNECT ports default to 443 and 8443; ranges parse") {
  auto r = defaults();
  CHECK(r.connect_port_allowed(443));
  CHECK(r.connect_port_allowed(8443));
  CHECK_FALSE(r.connect_port_allowed(22));
  CHECK_FALSE(r.connect_port_allowed(80));
  CHECK(r.http_port_allowed(80));
  CHECK(r.http_port_allowed(8080));
  CHECK_FALSE(r.http_port_allowed(25));
  policy::PortRange pr;
  std::string why;
  CHECK(policy::parse_port_range("1024-65535", pr, why));
  CHECK((pr.lo == 1024 && pr.hi == 65535));
  for (const char* bad : {"0", "65536", "10-5", "a", "", "443-", "-1", "1 - 2"})
    CHECK_MESSAGE(!policy::parse_port_range(bad, pr, why), bad);
}

TEST_CASE("access: SSRF destinations refused by default, exceptions allowed") {
  auto r = defaults();
  for (const char* no : {"127.0.0.1", "127.8.9.10", "::1", "169.254.169.254", "169.254.1.1", "fe80::1",
                         "0.0.0.0", "::", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
                         "224.0.0.1", "255.255.255.255"}) {
    auto why = r.refuse_destination(sa(addr(no, 443)));
    CHECK_MESSAGE(why.has_value(), no);
  }
  for (const char* ok : {"93.184.216.34", "10.0.0.5", "192.168.1.10", "2001:db8::5"})
    CHECK_MESSAGE(!r.refuse_destination(sa(addr(ok, 443))), ok);

  policy::AccessSettings s;
  s.allow_destinations = {"127.0.0.1"};
  std::string why;
  auto loose = policy::AccessRules::build(s, why);
  REQUIRE(loose);
  CHECK_FALSE(loose->refuse_destination(sa(addr("127.0.0.1", 8080))));
  CHECK(loose->refuse_destination(sa(addr("127.0.0.2", 8080))));
  // The proxy's own listener stays refused even inside an allowed range.
  loose->add_own_endpoints({addr("127.0.0.1", 3128)});
  auto own = loose->refuse_destination(sa(addr("127.0.0.1", 3128)));
  REQUIRE(own);
  CHECK(own->find("own listeners") != std::string::npos);
  CHECK_FALSE(loose->refuse_destination(sa(addr("127.0.0.1", 3129))));
}

TEST_CASE("access: a wildcard listener covers this host's addresses") {
  policy::AccessSettings s;
  s.deny_destinations.clear();
  std::string why;
  auto r = policy::AccessRules::build(s, why);
  REQUIRE(r);
  r->add_own_endpoints({addr("0.0.0.0", 3128)});
  CHECK(r->refuse_destination(sa(addr("127.0.0.1", 3128))));  // lo is an interface address
  CHECK_FALSE(r->refuse_destination(sa(addr("127.0.0.1", 443))));
}

TEST_CASE("access: bad entries are named") {
  policy::AccessSettings s;
  s.allow_clients = {"10.0.0.0/33"};
  std::string why;
  CHECK_FALSE(policy::AccessRules::build(s, why));
  CHECK(why.find("allow_clients") != std::string::npos);
  s = {};
  s.connect_ports = {"0"};
  CHECK_FALSE(policy::AccessRules::build(s, why));
  CHECK(why.find("connect_ports") != std::string::npos);
}

TEST_CASE("connection limits: total and per client, released with the slot") {
  net::ConnectionLimits lim(3, 2);
  net::ConnectionLimits::Slot a, b, c, d, e;
  auto x = addr("10.0.0.1"), y = addr("10.0.0.2"), xm = addr("::ffff:10.0.0.1");
  CHECK(lim.acquire(sa(x), a) == net::ConnectionLimits::Verdict::ok);
  CHECK(lim.acquire(sa(xm), b) == net::ConnectionLimits::Verdict::ok);  // the same client, mapped
  CHECK(lim.acquire(sa(x), c) == net::ConnectionLimits::Verdict::per_client);
  CHECK_FALSE(c);
  CHECK(lim.acquire(sa(y), d) == net::ConnectionLimits::Verdict::ok);
  CHECK(lim.total() == 3);
  CHECK(lim.acquire(sa(addr("10.0.0.3")), e) == net::ConnectionLimits::Verdict::total);
  CHECK(lim.total() == 3);
  a.reset();
  CHECK(lim.total() == 2);
  CHECK(lim.acquire(sa(x), c) == net::ConnectionLimits::Verdict::ok);
  {
    net::ConnectionLimits::Slot moved = std::move(c);
    CHECK_FALSE(c);
    CHECK(lim.total() == 3);
  }
  CHECK(lim.total() == 2);
  net::ConnectionLimits unlimited(0, 0);
  net::ConnectionLimits::Slot u;
  CHECK(unlimited.acquire(sa(x), u) == net::ConnectionLimits::Verdict::ok);
}

TEST_CASE("config: [access], [limits] and [process]") {
  app::ConfigError err;
  auto cfg = app::parse_config(R"(
[limits]
max_connections = 500
max_connections_per_client = 0
[access]
allow_clients = ["10.20.0.0/16", "::1"]
connect_ports = [443, "8000-8999"]
http_ports = [80]
deny_destinations = ["169.254.0.0/16"]
allow_destinations = ["169.254.10.0/24"]
deny_own_listeners = false
[process]
user = "sightline"
group = "sightline"
)", "t.toml", err);
  REQUIRE_MESSAGE(cfg, err.message);
  CHECK(cfg->max_connections == 500);
  CHECK(cfg->max_connections_per_client == 0);
  CHECK(cfg->access.connect_ports == std::vector<std::string>{"443", "8000-8999"});
  CHECK(cfg->access.allow_clients.size() == 2);
  CHECK_FALSE(cfg->access.deny_own_listeners);
  CHECK(cfg->run_as_user == "sightline");
  CHECK(cfg->run_as_group == "sightline");

  auto defaults = app::parse_config("", "t.toml", err);
  REQUIRE(defaults);
  CHECK(defaults->max_connections == 20000);
  CHECK(defaults->max_connections_per_client == 1000);
  CHECK(defaults->access.connect_ports == std::vector<std::string>{"443", "8443"});

  for (const char* bad : {"[access]\nallow_clients = [\"10.0.0.1/40\"]\n", "[access]\nconnect_ports = [0]\n",
                          "[access]\nconnect_ports = [\"9-1\"]\n", "[access]\nsurprise = 1\n",
                          "[process]\ngroup = \"x\"\n", "[limits]\nmax_connections = -1\n",
                          // Floats are no integers (toml++ would convert them unchecked: found by config_fuzz).
                          "[limits]\nmax_connections = 1e24\n", "[access]\nconnect_ports = [1e30]\n",
                          "[archive]\ncompression = 1e30\n", "[icap]\nmax_body = 1e24\n"}) {
    CHECK_MESSAGE(!app::parse_config(bad, "t.toml", err), bad);
    CHECK(err.message.find("t.toml:") == 0);
  }
}

TEST_CASE("private files: group or world access refused") {
  std::string path = "/tmp/sightline-key-test-" + std::to_string(::getpid()), why;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  REQUIRE(fd >= 0);
  ::close(fd);
  ::chmod(path.c_str(), 0600);
  CHECK(core::check_private_file(path, "CA key", why));
  ::chmod(path.c_str(), 0640);
  CHECK_FALSE(core::check_private_file(path, "CA key", why));
  CHECK(why.find("mode 640") != std::string::npos);
  ::chmod(path.c_str(), 0604);
  CHECK_FALSE(core::check_private_file(path, "CA key", why));
  ::unlink(path.c_str());
  CHECK_FALSE(core::check_private_file(path, "CA key", why));
  CHECK(why.find("No such file") != std::string::npos);
}
