#include "hooks/pcap.h"

#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace sightline::hooks::pcap {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

std::uint16_t internet_checksum(std::span<const std::uint8_t> data, std::uint32_t initial) {
  // 64-bit accumulator: a 64 KiB segment cannot overflow it before folding.
  std::uint64_t sum = initial;
  std::size_t i = 0;
  for (; i + 1 < data.size(); i += 2) sum += static_cast<std::uint32_t>(data[i] << 8 | data[i + 1]);
  if (i < data.size()) sum += static_cast<std::uint32_t>(data[i] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<std::uint16_t>(~sum & 0xffff);
}

namespace {

// Little helpers writing in host order (pcap/pcapng headers are read in the
// writer's byte order, announced by the magic) and network order (packets).
template <typename T>
void put_host(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void put_be16(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 8);
  p[1] = static_cast<std::uint8_t>(v);
}
void put_be32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}

void pad4(std::string& out) {
  while (out.size() % 4) out.push_back('\0');
}

// pcapng option: code, length, value padded to 32 bits.
void put_option(std::string& out, std::uint16_t code, std::string_view value) {
  put_host(out, code);
  put_host(out, static_cast<std::uint16_t>(value.size()));
  out.append(value);
  pad4(out);
}

// Writes a block's total length at `start` and again at the end.
void finish_block(std::string& out, std::size_t start) {
  auto len = static_cast<std::uint32_t>(out.size() - start + 4);
  std::memcpy(out.data() + start + 4, &len, 4);
  put_host(out, len);
}

std::uint64_t ticks_since_epoch(WallClock::time_point ts, TsResolution res) {
  auto d = ts.time_since_epoch();
  if (d.count() < 0) return 0;
  if (res == TsResolution::nano)
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
}

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

constexpr std::uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04, kPsh = 0x08, kAck = 0x10;
constexpr std::size_t kEth = 14, kIp4 = 20, kIp6 = 40, kTcp = 20;

}  // namespace

void append_header(std::string& out, Format format, TsResolution res) {
  if (format == Format::pcap) {
    put_host(out, std::uint32_t{res == TsResolution::nano ? 0xa1b23c4dU : 0xa1b2c3d4U});
    put_host(out, std::uint16_t{2});
    put_host(out, std::uint16_t{4});
    put_host(out, std::int32_t{0});    // thiszone
    put_host(out, std::uint32_t{0});   // sigfigs
    put_host(out, kSnapLen);
    put_host(out, std::uint32_t{1});   // LINKTYPE_ETHERNET
    return;
  }
  // Section Header Block.
  std::size_t start = out.size();
  put_host(out, std::uint32_t{0x0a0d0d0a});
  put_host(out, std::uint32_t{0});  // total length, patched
  put_host(out, std::uint32_t{0x1a2b3c4d});
  put_host(out, std::uint16_t{1});
  put_host(out, std::uint16_t{0});
  put_host(out, std::int64_t{-1});  // section length unknown: we stream
  put_option(out, 4, "sightline (decrypted)");  // shb_userappl
  put_option(out, 0, {});
  finish_block(out, start);
  // Interface Description Block: Ethernet, if_tsresol 10^-6 or 10^-9.
  start = out.size();
  put_host(out, std::uint32_t{1});
  put_host(out, std::uint32_t{0});
  put_host(out, std::uint16_t{1});  // LINKTYPE_ETHERNET
  put_host(out, std::uint16_t{0});
  put_host(out, kSnapLen);
  put_option(out, 2, "sightline");  // if_name
  char tsresol = res == TsResolution::nano ? 9 : 6;
  put_option(out, 9, std::string_view(&tsresol, 1));
  put_option(out, 0, {});
  finish_block(out, start);
}

void append_record(std::string& out, Format format, TsResolution res, WallClock::time_point ts,
                   std::span<const std::uint8_t> frame) {
  std::uint64_t t = ticks_since_epoch(ts, res);
  auto len = static_cast<std::uint32_t>(frame.size());
  if (format == Format::pcap) {
    std::uint64_t per_sec = res == TsResolution::nano ? 1000000000ULL : 1000000ULL;
    put_host(out, static_cast<std::uint32_t>(t / per_sec));
    put_host(out, static_cast<std::uint32_t>(t % per_sec));
    put_host(out, len);
    put_host(out, len);
    out.append(reinterpret_cast<const char*>(frame.data()), frame.size());
    return;
  }
  std::size_t start = out.size();
  put_host(out, std::uint32_t{6});  // Enhanced Packet Block
  put_host(out, std::uint32_t{0});
  put_host(out, std::uint32_t{0});  // interface 0
  put_host(out, static_cast<std::uint32_t>(t >> 32));
  put_host(out, static_cast<std::uint32_t>(t));
  put_host(out, len);
  put_host(out, len);
  out.append(reinterpret_cast<const char*>(frame.data()), frame.size());
  pad4(out);
  finish_block(out, start);
}

TcpFlowEncoder::TcpFlowEncoder(const FlowInfo& flow, const PortMap& port_map) {
  const sockaddr_storage* ss[2] = {&flow.client, &flow.server};
  // A flow whose legs differ in family (IPv4 client, IPv6 upstream) is shown
  // as IPv6 with the IPv4 side v4-mapped: one packet has one IP version.
  v6_ = flow.client.ss_family == AF_INET6 || flow.server.ss_family == AF_INET6;
  for (int i = 0; i < 2; ++i) {
    End& e = ends_[i];
    if (ss[i]->ss_family == AF_INET6) {
      const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(ss[i]);
      std::memcpy(e.addr, &sin6->sin6_addr, 16);
      e.port = ntohs(sin6->sin6_port);
    } else if (ss[i]->ss_family == AF_INET) {
      const auto* sin = reinterpret_cast<const sockaddr_in*>(ss[i]);
      if (v6_) {
        e.addr[10] = e.addr[11] = 0xff;
        std::memcpy(e.addr + 12, &sin->sin_addr, 4);
      } else {
        std::memcpy(e.addr, &sin->sin_addr, 4);
      }
      e.port = ntohs(sin->sin_port);
    }
    // Stable per address so one host keeps one MAC across flows; 0x02 marks a
    // locally administered unicast address.
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (std::uint8_t b : e.addr) h = (h ^ b) * 0x100000001b3ULL;
    h = splitmix64(h);
    e.mac[0] = 0x02;
    for (int k = 1; k < 6; ++k) e.mac[k] = static_cast<std::uint8_t>(h >> (8 * k));
    e.isn = static_cast<std::uint32_t>(splitmix64(flow.conn_id * 2 + static_cast<unsigned>(i)));
    e.next_seq = e.isn;
    e.ip_id = static_cast<std::uint16_t>(h >> 48);
  }
  if (auto it = port_map.find(ends_[1].port); it != port_map.end()) ends_[1].port = it->second;
}

std::uint32_t TcpFlowEncoder::initial_seq(FlowDir sender) const {
  return ends_[sender == FlowDir::to_server ? 0 : 1].isn;
}

void TcpFlowEncoder::segment(int from, std::uint8_t flags, std::span<const std::uint8_t> payload,
                             WallClock::time_point ts, const FrameFn& out) {
  // One scratch frame per thread: per-flow buffers would cost 64 KiB per flow.
  thread_local std::vector<std::uint8_t> frame;
  End& src = ends_[from];
  End& dst = ends_[1 - from];
  const std::size_t ip_len = v6_ ? kIp6 : kIp4;
  const std::size_t tcp_len = kTcp + payload.size();
  frame.assign(kEth + ip_len + tcp_len, 0);
  std::uint8_t* p = frame.data();

  std::memcpy(p, dst.mac, 6);
  std::memcpy(p + 6, src.mac, 6);
  put_be16(p + 12, v6_ ? 0x86dd : 0x0800);

  std::uint8_t* ip = p + kEth;
  std::uint32_t pseudo = 0;
  auto add_words = [&pseudo](const std::uint8_t* a, std::size_t n) {
    for (std::size_t k = 0; k < n; k += 2) pseudo += static_cast<std::uint32_t>(a[k] << 8 | a[k + 1]);
  };
  if (v6_) {
    put_be32(ip, 0x60000000);
    put_be16(ip + 4, static_cast<std::uint32_t>(tcp_len));
    ip[6] = 6;   // TCP
    ip[7] = 64;  // hop limit
    std::memcpy(ip + 8, src.addr, 16);
    std::memcpy(ip + 24, dst.addr, 16);
    add_words(src.addr, 16);
    add_words(dst.addr, 16);
    pseudo += static_cast<std::uint32_t>(tcp_len >> 16) + static_cast<std::uint32_t>(tcp_len & 0xffff);
    pseudo += 6;
  } else {
    ip[0] = 0x45;
    put_be16(ip + 2, static_cast<std::uint32_t>(kIp4 + tcp_len));
    put_be16(ip + 4, src.ip_id++);
    put_be16(ip + 6, 0x4000);  // DF
    ip[8] = 64;
    ip[9] = 6;
    std::memcpy(ip + 12, src.addr, 4);
    std::memcpy(ip + 16, dst.addr, 4);
    put_be16(ip + 10, internet_checksum({ip, kIp4}));
    add_words(src.addr, 4);
    add_words(dst.addr, 4);
    pseudo += 6 + static_cast<std::uint32_t>(tcp_len);
  }

  std::uint8_t* tcp = ip + ip_len;
  put_be16(tcp, src.port);
  put_be16(tcp + 2, dst.port);
  put_be32(tcp + 4, src.next_seq);
  put_be32(tcp + 8, (flags & kAck) ? dst.next_seq : 0);
  tcp[12] = 5 << 4;
  tcp[13] = flags;
  put_be16(tcp + 14, 65535);  // window: never the bottleneck, we ACK every segment
  if (!payload.empty()) std::memcpy(tcp + kTcp, payload.data(), payload.size());
  put_be16(tcp + 16, internet_checksum({tcp, tcp_len}, pseudo));

  src.next_seq += static_cast<std::uint32_t>(payload.size());
  if (flags & (kSyn | kFin)) src.next_seq += 1;
  out(ts, frame);
}

void TcpFlowEncoder::open(WallClock::time_point ts, const FrameFn& out) {
  segment(0, kSyn, {}, ts, out);
  segment(1, kSyn | kAck, {}, ts, out);
  segment(0, kAck, {}, ts, out);
}

void TcpFlowEncoder::data(FlowDir dir, std::string_view bytes, WallClock::time_point ts,
                          const FrameFn& out) {
  int from = dir == FlowDir::to_server ? 0 : 1;
  const auto* p = reinterpret_cast<const std::uint8_t*>(bytes.data());
  std::size_t left = bytes.size();
  while (left > 0) {
    std::size_t n = std::min(left, kMaxSegment);
    segment(from, kPsh | kAck, {p, n}, ts, out);
    segment(1 - from, kAck, {}, ts, out);
    p += n;
    left -= n;
  }
}

void TcpFlowEncoder::close(bool clean, WallClock::time_point ts, const FrameFn& out) {
  if (!clean) {
    segment(0, kRst | kAck, {}, ts, out);
    return;
  }
  segment(0, kFin | kAck, {}, ts, out);
  segment(1, kFin | kAck, {}, ts, out);
  segment(0, kAck, {}, ts, out);
}

}  // namespace sightline::hooks::pcap
