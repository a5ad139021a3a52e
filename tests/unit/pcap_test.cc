#include "hooks/pcap.h"
#include "hooks/pcap_over_ip.h"
#include "hooks/pcap_sink.h"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace sightline;
using namespace sightline::hooks;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/sightline-pcap-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

struct CmdResult {
  int rc = -1;
  std::string out;
};

CmdResult run(const std::string& cmd) {
  CmdResult r;
  FILE* p = ::popen((cmd + " 2>/dev/null").c_str(), "r");
  if (!p) return r;
  char buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = ::pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// tshark is a declared test dependency (dev.sh test_pkgs): missing is a failure.
void require_tshark() {
  static const bool have = run("tshark --version").rc == 0 && run("capinfos -h").rc == 0;
  REQUIRE_MESSAGE(have, "tshark/capinfos not installed (Debian package tshark, see dev.sh)");
}

std::shared_ptr<FlowInfo> make_flow(std::uint64_t id, const char* client, std::uint16_t cport,
                                    const char* server, std::uint16_t sport) {
  auto f = std::make_shared<FlowInfo>();
  f->conn_id = id;
  auto fill = [](sockaddr_storage& ss, const char* ip, std::uint16_t port) {
    if (std::strchr(ip, ':')) {
      auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
      s6->sin6_family = AF_INET6;
      s6->sin6_port = htons(port);
      REQUIRE(inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1);
    } else {
      auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
      s4->sin_family = AF_INET;
      s4->sin_port = htons(port);
      REQUIRE(inet_pton(AF_INET, ip, &s4->sin_addr) == 1);
    }
  };
  fill(f->client, client, cport);
  fill(f->server, server, sport);
  return f;
}

WallClock::time_point t0() { return WallClock::time_point(std::chrono::seconds(1795731300)); }

StreamEvent ev_open(const std::shared_ptr<FlowInfo>& f, WallClock::time_point ts) {
  StreamEvent e;
  e.kind = StreamKind::open;
  e.flow = f;
  e.ts = ts;
  return e;
}
StreamEvent ev_data(const std::shared_ptr<FlowInfo>& f, FlowDir dir, std::string bytes,
                    WallClock::time_point ts) {
  StreamEvent e;
  e.kind = StreamKind::data;
  e.dir = dir;
  e.flow = f;
  e.ts = ts;
  e.bytes = std::move(bytes);
  return e;
}
StreamEvent ev_close(const std::shared_ptr<FlowInfo>& f, bool clean, WallClock::time_point ts) {
  StreamEvent e;
  e.kind = StreamKind::close;
  e.clean = clean;
  e.flow = f;
  e.ts = ts;
  return e;
}

std::string body_of(std::size_t n, unsigned seed) {
  std::string b(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : b) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return b;
}

// One HTTP/1.1 connection with two exchanges; the first response body is
// larger than one 64 KiB segment. Returns the bytes each side sent.
struct Written {
  std::string to_server, to_client;
};
Written http_flow(PcapSink& sink, const std::shared_ptr<FlowInfo>& f, WallClock::time_point ts,
                  std::size_t body = 150000) {
  Written w;
  auto send = [&](FlowDir dir, std::string bytes) {
    (dir == FlowDir::to_server ? w.to_server : w.to_client) += bytes;
    ts += std::chrono::milliseconds(3);
    sink.on_stream(ev_data(f, dir, std::move(bytes), ts));
  };
  sink.on_stream(ev_open(f, ts));
  send(FlowDir::to_server, "GET /first?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n");
  std::string b = body_of(body, static_cast<unsigned>(f->conn_id));
  std::string resp = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
                     std::to_string(b.size()) + "\r\n\r\n" + b;
  // Decrypted data arrives in uneven chunks: one small, one spanning segments.
  std::size_t cut = std::min<std::size_t>(1000, resp.size() / 2);
  send(FlowDir::to_client, resp.substr(0, cut));
  send(FlowDir::to_client, resp.substr(cut));
  send(FlowDir::to_server, "POST /second HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
  send(FlowDir::to_client, "HTTP/1.1 204 No Content\r\n\r\n");
  ts += std::chrono::milliseconds(1);
  sink.on_stream(ev_close(f, true, ts));
  return w;
}

std::vector<fs::path> capture_files(const fs::path& dir) {
  std::vector<fs::path> out;
  for (auto& e : fs::directory_iterator(dir)) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

std::string unhex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// Reassembled payload of TCP stream `stream` in each direction, per tshark.
Written follow(const fs::path& file, int stream) {
  auto r = run("tshark -r '" + file.string() + "' -q -z follow,tcp,raw," + std::to_string(stream));
  REQUIRE(r.rc == 0);
  Written w;
  std::istringstream in(r.out);
  std::string line;
  bool body = false;
  while (std::getline(in, line)) {
    if (line.starts_with("Node 1:")) {
      body = true;
      continue;
    }
    if (!body) continue;
    if (line.starts_with("=====")) break;
    if (line.starts_with("\t")) w.to_client += unhex(line.substr(1));
    else w.to_server += unhex(line);
  }
  return w;
}

// No malformed packets, no bad checksums (validation on), nothing at warning
// level or above. `lenient` stops at errors: a RST is a warning in Wireshark,
// and so is a file that starts mid-flow after rotation (body bytes parsed as
// HTTP headers).
void check_clean(const fs::path& file, bool lenient = false) {
  std::string filter = lenient ? "_ws.malformed || _ws.expert.severity >= error"
                                 : "_ws.malformed || _ws.expert.severity >= warning";
  filter += " || tcp.checksum.status == 0 || ip.checksum.status == 0 || tcp.checksum.status == 2";
  auto r = run("tshark -r '" + file.string() +
               "' -o tcp.check_checksum:TRUE -o ip.check_checksum:TRUE -Y '" + filter +
               "' -T fields -e frame.number -e _ws.expert.message");
  CHECK(r.rc == 0);
  CHECK_MESSAGE(r.out.empty(), file.string() << ": " << r.out);
}

std::uint64_t packet_count(const fs::path& file) {
  auto r = run("capinfos -M -c -T -r '" + file.string() + "'");
  REQUIRE(r.rc == 0);
  auto tab = r.out.find('\t');
  REQUIRE(tab != std::string::npos);
  return std::stoull(r.out.substr(tab + 1));
}

std::vector<std::uint8_t> bytes(const std::string& hex) {
  std::string s = unhex(hex);
  return {s.begin(), s.end()};
}

}  // namespace

TEST_CASE("pcap: internet checksum known vectors") {
  // RFC 1071 section 3 example.
  CHECK(pcap::internet_checksum(bytes("0001f203f4f5f6f7")) == 0x220d);
  // A well-known IPv4 header (checksum field zeroed) and the same with it set.
  CHECK(pcap::internet_checksum(bytes("450000730000400040110000c0a80001c0a800c7")) == 0xb861);
  CHECK(pcap::internet_checksum(bytes("45000073000040004011b861c0a80001c0a800c7")) == 0);
  // TCP pseudo-header + segment with an odd payload ("abc"), v4 and v6;
  // values computed independently (Python).
  std::string tcp = "c35000500102030400000000501" "8ffff00000000" "616263";
  CHECK(pcap::internet_checksum(bytes("0a0000015db8d8220006" "0017" + tcp)) == 0xe3e4);
  CHECK(pcap::internet_checksum(bytes("20010db8000000000000000000000001"
                                      "20010db8000000000000000000000002"
                                      "00000017" "00000006" + tcp)) == 0xc84b);
}

TEST_CASE("pcap: encoder frames carry valid checksums and consistent sequence numbers") {
  auto f = make_flow(42, "10.1.2.3", 50123, "93.184.216.34", 443);
  pcap::TcpFlowEncoder enc(*f, {{443, 80}});
  CHECK(enc.initial_seq(FlowDir::to_server) != enc.initial_seq(FlowDir::to_client));
  pcap::TcpFlowEncoder again(*f, {});
  CHECK(again.initial_seq(FlowDir::to_server) == enc.initial_seq(FlowDir::to_server));

  std::vector<std::vector<std::uint8_t>> frames;
  pcap::FrameFn out = [&](WallClock::time_point, std::span<const std::uint8_t> fr) {
    frames.emplace_back(fr.begin(), fr.end());
  };
  enc.open(t0(), out);
  enc.data(FlowDir::to_client, std::string(200000, 'x'), t0(), out);
  enc.close(true, t0(), out);
  // 3 handshake + 4 segments (200000 / 65495) each with its ACK + 3 closing.
  REQUIRE(frames.size() == 3 + 8 + 3);
  auto be32 = [](const std::uint8_t* p) {
    return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 | p[3];
  };
  std::uint32_t server_seq = enc.initial_seq(FlowDir::to_client) + 1;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    const auto& fr = frames[i];
    CAPTURE(i);
    REQUIRE(fr.size() >= 54);
    CHECK(fr[12] == 0x08);
    CHECK(fr[13] == 0x00);
    const std::uint8_t* ip = fr.data() + 14;
    CHECK(pcap::internet_checksum({ip, 20}) == 0);
    std::size_t tcp_len = fr.size() - 34;
    CHECK(tcp_len <= 65535 - 20);
    // Pseudo-header sum, then the whole segment must sum to zero.
    std::uint32_t pseudo = 6 + static_cast<std::uint32_t>(tcp_len);
    for (int k = 12; k < 20; k += 2) pseudo += static_cast<std::uint32_t>(ip[k] << 8 | ip[k + 1]);
    const std::uint8_t* tcp = ip + 20;
    CHECK(pcap::internet_checksum({tcp, tcp_len}, pseudo) == 0);
    CHECK((tcp[2] << 8 | tcp[3]) != 443);  // port map applied
    if (i >= 3 && i < 11 && i % 2 == 1) {   // server data segments
      CHECK(be32(tcp + 4) == server_seq);
      server_seq += static_cast<std::uint32_t>(tcp_len - 20);
    }
    if (i >= 3 && i < 11 && i % 2 == 0) CHECK(be32(tcp + 8) == server_seq);  // client ACKs
  }
  CHECK(server_seq == enc.initial_seq(FlowDir::to_client) + 1 + 200000);
}

TEST_CASE("pcap: HTTP flows written as pcapng and pcap read back byte-exact in tshark") {
  require_tshark();
  struct Variant {
    pcap::Format format;
    pcap::TsResolution res;
    const char* ext;
  };
  for (Variant v : {Variant{pcap::Format::pcapng, pcap::TsResolution::micro, ".pcapng"},
                    Variant{pcap::Format::pcapng, pcap::TsResolution::nano, ".pcapng"},
                    Variant{pcap::Format::pcap, pcap::TsResolution::micro, ".pcap"},
                    Variant{pcap::Format::pcap, pcap::TsResolution::nano, ".pcap"}}) {
    CAPTURE(v.ext);
    CAPTURE(static_cast<int>(v.res));
    TempDir dir;
    PcapOptions o;
    o.dir = (dir.path / "caps").string();
    o.format = v.format;
    o.ts_resolution = v.res;
    std::string err;
    auto sink = PcapSink::create(o, &err);
    REQUIRE_MESSAGE(sink, err);
    auto f = make_flow(7, "10.0.0.5", 40000, "93.184.216.34", 80);
    Written w = http_flow(*sink, f, t0());
    sink->on_stop();

    auto files = capture_files(o.dir);
    REQUIRE(files.size() == 1);
    CHECK(files[0].filename().string() == std::string("sightline-20261126T221500Z-0001") + v.ext);
    struct stat st {};
    REQUIRE(::stat(files[0].c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(sink->files_opened() == 1);
    CHECK(sink->bytes_written() == static_cast<std::uint64_t>(st.st_size));
    CHECK(packet_count(files[0]) == sink->packets());

    auto uris = run("tshark -r '" + files[0].string() + "' -Y http.request -T fields -e http.request.uri");
    CHECK(uris.out == "/first?x=1\n/second\n");
    Written got = follow(files[0], 0);
    CHECK(got.to_server == w.to_server);
    CHECK(got.to_client.size() == w.to_client.size());
    CHECK(got.to_client == w.to_client);
    check_clean(files[0]);
    // The timestamp resolution reaches the file.
    auto first_ts = run("tshark -r '" + files[0].string() + "' -c 1 -T fields -e frame.time_epoch");
    CHECK(first_ts.out.starts_with("1795731300.000000"));
  }
}

TEST_CASE("pcap: IPv6 and mixed-family flows, port map 443 to 80, aborted flow") {
  require_tshark();
  TempDir dir;
  PcapOptions o;
  o.dir = dir.path.string();
  o.port_map = {{443, 80}};
  std::string err;
  auto sink = PcapSink::create(o, &err);
  REQUIRE_MESSAGE(sink, err);
  auto f6 = make_flow(1, "2001:db8::10", 51000, "2001:db8:1::443", 443);
  Written w6 = http_flow(*sink, f6, t0());
  auto fmixed = make_flow(2, "192.0.2.7", 52000, "2001:db8:1::443", 443);
  Written wm = http_flow(*sink, fmixed, t0() + std::chrono::seconds(1), 70000);
  auto f4 = make_flow(3, "192.0.2.8", 53000, "198.51.100.9", 8443);
  Written w4 = http_flow(*sink, f4, t0() + std::chrono::seconds(2), 100);
  sink->on_stop();
  auto files = capture_files(dir.path);
  REQUIRE(files.size() == 1);
  auto uris = run("tshark -r '" + files[0].string() + "' -Y http.request -T fields -e http.request.uri");
  CHECK(uris.out == "/first?x=1\n/second\n/first?x=1\n/second\n/first?x=1\n/second\n");
  auto ports = run("tshark -r '" + files[0].string() + "' -Y 'tcp.flags.syn==1 && tcp.flags.ack==0' "
                   "-T fields -e ipv6.src -e tcp.dstport");
  CHECK(ports.out == "2001:db8::10\t80\n::ffff:192.0.2.7\t80\n\t8443\n");
  Written g6 = follow(files[0], 0);
  CHECK(g6.to_server == w6.to_server);
  CHECK(g6.to_client == w6.to_client);
  Written gm = follow(files[0], 1);
  CHECK(gm.to_server == wm.to_server);
  CHECK(gm.to_client == wm.to_client);
  Written g4 = follow(files[0], 2);
  CHECK(g4.to_client == w4.to_client);
  check_clean(files[0]);

  // An aborted flow ends in a RST; data without an open gets a handshake.
  TempDir dir2;
  o.dir = dir2.path.string();
  sink = PcapSink::create(o, &err);
  REQUIRE(sink);
  auto fa = make_flow(9, "10.9.9.9", 40001, "10.8.8.8", 443);
  sink->on_stream(ev_data(fa, FlowDir::to_server, "GET /lazy HTTP/1.1\r\nHost: a\r\n\r\n", t0()));
  sink->on_stream(ev_close(fa, false, t0()));
  sink->on_stream(ev_close(fa, true, t0()));  // unknown by now: ignored
  sink->on_stop();
  files = capture_files(dir2.path);
  REQUIRE(files.size() == 1);
  auto count = [&](const std::string& filter) {
    auto r = run("tshark -r '" + files[0].string() + "' -Y '" + filter + "' -T fields -e frame.number");
    return std::count(r.out.begin(), r.out.end(), '\n');
  };
  CHECK(count("tcp") == 3 + 2 + 1);
  CHECK(count("tcp.flags.syn == 1") == 2);
  CHECK(count("tcp.flags.reset == 1 && tcp.srcport == 40001") == 1);
  uris = run("tshark -r '" + files[0].string() + "' -Y http.request -T fields -e http.request.uri");
  CHECK(uris.out == "/lazy\n");
  check_clean(files[0], /*lenient=*/true);
}

TEST_CASE("pcap: rotation by size and age, max_files, new files only with packets") {
  require_tshark();
  TempDir dir;
  PcapOptions o;
  o.dir = dir.path.string();
  o.format = pcap::Format::pcap;
  o.max_file_bytes = 100000;
  o.max_file_age = std::chrono::seconds(60);
  std::string err;
  auto sink = PcapSink::create(o, &err);
  REQUIRE(sink);
  std::vector<Written> flows;
  for (std::uint64_t i = 0; i < 4; ++i)
    flows.push_back(http_flow(*sink, make_flow(100 + i, "10.0.0.1", static_cast<std::uint16_t>(41000 + i),
                                               "10.0.0.2", 80),
                              t0() + std::chrono::seconds(i), 30000));
  sink->on_tick(t0() + std::chrono::seconds(5));  // flushes
  auto files = capture_files(dir.path);
  CHECK(files.size() >= 2);
  std::uint64_t total = 0, bytes = 0;
  for (auto& p : files) {
    CAPTURE(p);
    CHECK(fs::file_size(p) <= o.max_file_bytes);
    bytes += fs::file_size(p);
    total += packet_count(p);
    check_clean(p, /*lenient=*/true);
  }
  CHECK(total == sink->packets());
  CHECK(bytes == sink->bytes_written());
  CHECK(sink->files_opened() == files.size());

  // Age: the tick closes the file; the next one only appears with a packet.
  std::size_t before = files.size();
  sink->on_tick(t0() + std::chrono::minutes(10));
  sink->on_tick(t0() + std::chrono::minutes(20));
  CHECK(capture_files(dir.path).size() == before);
  auto late = make_flow(200, "10.0.0.1", 42000, "10.0.0.2", 80);
  sink->on_stream(ev_open(late, t0() + std::chrono::minutes(20)));
  sink->on_stop();
  files = capture_files(dir.path);
  CHECK(files.size() == before + 1);
  CHECK(files.back().filename().string().starts_with("sightline-20261126T223500Z-"));
  CHECK(packet_count(files.back()) == 3);

  // max_files keeps only the newest files (earlier runs' ones too).
  o.max_files = 2;
  sink = PcapSink::create(o, &err);
  REQUIRE(sink);
  for (std::uint64_t i = 0; i < 3; ++i)
    http_flow(*sink, make_flow(300 + i, "10.0.0.1", static_cast<std::uint16_t>(43000 + i), "10.0.0.2", 80),
              t0() + std::chrono::hours(1) + std::chrono::seconds(i), 60000);
  sink->on_stop();
  files = capture_files(dir.path);
  CHECK(files.size() == 2);
  for (auto& p : files) {
    CAPTURE(p);
    CHECK(p.filename().string().starts_with("sightline-20261126T2315"));
    check_clean(p, /*lenient=*/true);
  }
}

TEST_CASE("pcap: write errors are counted and logged once, the sink keeps going") {
  TempDir dir;
  PcapOptions o;
  o.dir = (dir.path / "caps").string();
  std::string err;
  auto sink = PcapSink::create(o, &err);
  REQUIRE(sink);
  // The directory disappears under the sink (and a file takes its name).
  fs::remove(o.dir);
  { std::ofstream(o.dir) << "x"; }
  auto f = make_flow(1, "10.0.0.1", 40000, "10.0.0.2", 80);
  for (int i = 0; i < 50; ++i) http_flow(*sink, f, t0(), 10);
  sink->on_tick(t0());
  sink->on_stop();
  CHECK(sink->write_errors() >= 1);
  CHECK(sink->write_errors() <= 2);  // retries wait a second: no storm
  CHECK(sink->files_opened() == 0);
  CHECK(sink->packets() > 0);

  // Bad configuration is refused up front.
  o.dir = (dir.path / "missing" / "deeper").string();
  CHECK_FALSE(PcapSink::create(o, &err));
  CHECK(err.find("pcap dir") != std::string::npos);
  o.dir.clear();
  o.over_ip_listen = "not-an-address";
  CHECK_FALSE(PcapSink::create(o, &err));
}

namespace {

int connect_to(std::uint16_t port, int rcvbuf = 0) {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  if (rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  a.sin6_addr = in6addr_loopback;
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

// Reads whatever is there without waiting.
void drain(int fd) {
  char buf[65536];
  pollfd p{fd, POLLIN, 0};
  while (::poll(&p, 1, 0) > 0 && ::recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
}

// Reads until `want` bytes arrived or nothing comes for 200 ms.
std::string read_some(int fd, std::size_t want) {
  std::string out;
  char buf[65536];
  while (out.size() < want) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) break;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace

TEST_CASE("pcap-over-IP: readers get the header then new packets; a stalled reader is dropped") {
  require_tshark();
  TempDir dir;
  PcapOptions o;
  o.over_ip_listen = "[::1]:0";
  o.reader_backlog_bytes = 256 * 1024;
  std::string err;
  auto sink = PcapSink::create(o, &err);
  REQUIRE_MESSAGE(sink, err);
  REQUIRE(sink->over_ip_port() != 0);

  // Packets before anyone connects go nowhere.
  http_flow(*sink, make_flow(1, "10.0.0.1", 40000, "10.0.0.2", 80), t0(), 10);
  int good = connect_to(sink->over_ip_port());
  sink->on_tick(t0());  // accepts
  std::string header = read_some(good, 24);
  REQUIRE(header.size() == 24);
  std::uint32_t magic;
  std::memcpy(&magic, header.data(), 4);
  CHECK(magic == 0xa1b2c3d4);

  auto before = sink->packets();
  auto f = make_flow(2, "10.0.0.1", 40001, "10.0.0.2", 80);
  Written w = http_flow(*sink, f, t0() + std::chrono::seconds(1), 100000);
  std::string stream = header + read_some(good, std::size_t(-1));
  {
    std::ofstream(dir.path / "live.pcap", std::ios::binary) << stream;
  }
  CHECK(packet_count(dir.path / "live.pcap") == sink->packets() - before);
  auto uris = run("tshark -r '" + (dir.path / "live.pcap").string() + "' -Y http.request -T fields -e http.request.uri");
  CHECK(uris.out == "/first?x=1\n/second\n");
  Written got = follow(dir.path / "live.pcap", 0);
  CHECK(got.to_client == w.to_client);
  check_clean(dir.path / "live.pcap");

  // A reader that never reads: its socket buffers and then its backlog fill,
  // it is dropped, and the sink never waits for it.
  int stalled = connect_to(sink->over_ip_port(), 4096);
  sink->on_tick(t0());
  auto start = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < 200 && sink->readers_dropped() == 0; ++i) {
    http_flow(*sink, make_flow(1000 + i, "10.0.0.1", static_cast<std::uint16_t>(20000 + i), "10.0.0.2", 80),
              t0() + std::chrono::seconds(2), 100000);
    drain(good);  // the good reader keeps up
  }
  auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(sink->readers_dropped() == 1);
  CHECK(elapsed < std::chrono::seconds(20));
  // The good reader is still served.
  http_flow(*sink, make_flow(5000, "10.0.0.1", 30000, "10.0.0.2", 80), t0() + std::chrono::seconds(3), 10);
  CHECK(!read_some(good, 1).empty());
  sink->on_stop();
  ::close(good);
  ::close(stalled);
}
