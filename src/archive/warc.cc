#include "archive/warc.h"

#include "hooks/event_json.h"
#include "tls/ossl.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#include <isa-l/crc.h>
#include <isa-l/igzip_lib.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>

namespace sightline::archive {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  }
  return true;
}

void append_headers(std::string& out, const exchange::Headers& headers) {
  for (const auto& h : headers) {
    out += h.name;
    out += ": ";
    out += h.value;
    out += "\r\n";
  }
}

std::string_view version_or_default(const std::string& v) {
  return v.empty() ? std::string_view("HTTP/1.1") : std::string_view(v);
}

}  // namespace

std::string http_request_block(const exchange::Head& head, std::string_view body) {
  std::string out;
  out.reserve(256 + body.size());
  out += head.method;
  out += ' ';
  out += head.target.empty() ? "/" : head.target;
  out += ' ';
  out += version_or_default(head.version);
  out += "\r\n";
  bool has_host = false;
  for (const auto& h : head.headers) has_host = has_host || iequals(h.name, "host");
  if (!has_host && !head.authority.empty()) out += "Host: " + head.authority + "\r\n";
  append_headers(out, head.headers);
  out += "\r\n";
  out += body;
  return out;
}

bool body_incompressible(const exchange::Head& head) {
  for (const auto& h : head.headers) {
    if (iequals(h.name, "content-encoding")) {
      std::string_view v = h.value;
      if (!v.empty() && !iequals(v, "identity")) return true;
    } else if (iequals(h.name, "content-type")) {
      std::string t;
      for (char c : h.value.substr(0, h.value.find(';'))) t += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.pop_back();
      if ((t.starts_with("image/") && t != "image/svg+xml") || t.starts_with("audio/") || t.starts_with("video/") ||
          t.starts_with("font/woff") || t == "application/octet-stream" || t == "application/zip" ||
          t == "application/gzip" || t == "application/x-gzip" || t == "application/zstd" ||
          t == "application/x-7z-compressed" || t == "application/x-rar-compressed" || t == "application/x-bzip2" ||
          t == "application/x-xz" || t == "application/pdf")
        return true;
    }
  }
  return false;
}

std::string http_response_block(const exchange::Head& head, std::string_view body) {
  std::string out;
  out.reserve(256 + body.size());
  out += version_or_default(head.version);
  out += ' ';
  out += std::to_string(head.status);
  if (!head.reason.empty()) {
    out += ' ';
    out += head.reason;
  }
  out += "\r\n";
  append_headers(out, head.headers);
  out += "\r\n";
  out += body;
  return out;
}

namespace {

// SHA-256 with the algorithm fetched once and a context per thread: the
// one-shot EVP_Digest fetches the implementation on every call (OpenSSL 3),
// which cost more than hashing a small record.
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {}
  Digest of(std::initializer_list<std::string_view> parts) {
    static const EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);  // kept for the process
    Digest d{};
    // Cannot fail for SHA-256 short of memory exhaustion.
    EVP_DigestInit_ex(ctx_.get(), md ? md : EVP_sha256(), nullptr);
    for (auto p : parts) EVP_DigestUpdate(ctx_.get(), p.data(), p.size());
    EVP_DigestFinal_ex(ctx_.get(), d.data(), nullptr);
    return d;
  }

 private:
  tls::EvpMdCtxPtr ctx_;
};

Sha256& thread_sha256() {
  thread_local Sha256 h;
  return h;
}

}  // namespace

Digest sha256(std::string_view data) { return thread_sha256().of({data}); }
Digest sha256_parts(std::initializer_list<std::string_view> parts) { return thread_sha256().of(parts); }

Digest chain_next(const Digest& prev, const Digest& record_digest) {
  auto view = [](const Digest& d) { return std::string_view(reinterpret_cast<const char*>(d.data()), d.size()); };
  return thread_sha256().of({view(prev), view(record_digest)});
}

void append_hex(std::string& out, std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const std::size_t at = out.size();
  out.resize(at + bytes.size() * 2);
  char* p = out.data() + at;
  for (unsigned char c : bytes) {
    *p++ = kDigits[c >> 4];
    *p++ = kDigits[c & 15];
  }
}

std::string to_hex(std::string_view bytes) {
  std::string out;
  append_hex(out, bytes);
  return out;
}

std::optional<Digest> digest_from_hex(std::string_view hex) {
  Digest d{};
  if (hex.size() != d.size() * 2) return std::nullopt;
  for (std::size_t i = 0; i < d.size(); ++i) {
    auto r = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, d[i], 16);
    if (r.ec != std::errc() || r.ptr != hex.data() + 2 * i + 2) return std::nullopt;
  }
  return d;
}

namespace {

// RFC 4648 base32 of 32 bytes: 52 symbols and 4 '=' of padding, written in place.
void append_base32(std::string& out, const Digest& d) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const std::size_t at = out.size();
  out.resize(at + 56, '=');
  char* p = out.data() + at;
  std::uint32_t buffer = 0;
  int bits = 0;
  for (unsigned char c : d) {
    buffer = (buffer << 8) | c;
    bits += 8;
    while (bits >= 5) {
      *p++ = kAlphabet[(buffer >> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) *p = kAlphabet[(buffer << (5 - bits)) & 31];
}

}  // namespace

std::string base32(const Digest& d) {
  std::string out;
  append_base32(out, d);
  return out;
}

void append_warc_digest(std::string& out, std::string_view data) {
  out += "sha256:";
  append_base32(out, sha256(data));
}

std::string warc_digest(std::string_view data) {
  std::string out;
  append_warc_digest(out, data);
  return out;
}

std::string new_record_id() {
  // Random bytes drawn 4 KiB at a time: RAND_bytes per id (three per
  // exchange) spent more in the DRBG's locking than in generating.
  thread_local unsigned char pool[4096];
  thread_local std::size_t used = sizeof pool;
  unsigned char b[16];
  if (used + sizeof b > sizeof pool && RAND_bytes(pool, sizeof pool) == 1) used = 0;
  if (used + sizeof b <= sizeof pool) {
    std::memcpy(b, pool + used, sizeof b);
    std::memset(pool + used, 0, sizeof b);  // each id's bytes are handed out once
    used += sizeof b;
  } else {
    // Only a broken RNG gets here; record ids then still differ per call.
    static std::uint64_t fallback = 0;
    std::uint64_t v = ++fallback ^ static_cast<std::uint64_t>(WallClock::now().time_since_epoch().count());
    std::memcpy(b, &v, sizeof v);
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  std::string h = to_hex(std::string_view(reinterpret_cast<const char*>(b), sizeof b));
  return "<urn:uuid:" + h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" +
         h.substr(16, 4) + "-" + h.substr(20) + ">";
}

std::string warc_date(WallClock::time_point t) {
  std::string out;
  hooks::append_rfc3339(out, t);  // the same format, and no time zone lock
  return out;
}

std::string serialize_unchained(const WarcRecord& r) {
  std::string out;
  out.reserve(512 + r.block.size());
  out += "WARC/1.1\r\n";
  for (const auto& h : r.headers) {
    out += h.name;
    out += ": ";
    out += h.value;
    out += "\r\n";
  }
  out += "Content-Length: " + std::to_string(r.block.size()) + "\r\n\r\n";
  out += r.block;
  out += "\r\n\r\n";
  return out;
}

std::string add_chain_header(std::string_view unchained, const Digest& chain) {
  std::size_t head_end = unchained.find("\r\n\r\n");
  std::string out;
  out.reserve(unchained.size() + 96);
  out.append(unchained.substr(0, head_end + 2));
  out.append(kChainHeader);
  out += ": sha256:" + to_hex(chain) + "\r\n";
  out.append(unchained.substr(head_end + 2));
  return out;
}

namespace {

// One deflate state per thread and level, reset between members:
// deflateInit2 costs about 50 us (it allocates and clears ~270 KiB), more
// than compressing a typical record. One state per level (levels 1-9; 0 is
// written by stored_append), not one re-initialized whenever the level
// changes. memLevel 6 keeps the
// per-member reset (clearing the hash table) small; records are small, so
// the ratio barely changes.
class Deflater {
 public:
  Deflater() = default;
  Deflater(const Deflater&) = delete;
  Deflater& operator=(const Deflater&) = delete;
  ~Deflater() {
    if (ok_) deflateEnd(&zs_);
  }

  // Appends the member to `out`; false (and `out` unchanged) on failure.
  bool append(std::string& out, std::string_view data, int level) {
    if (!ok_) {
      zs_ = z_stream{};
      // windowBits 15 + 16: a gzip wrapper, so each record is a whole gzip member.
      ok_ = deflateInit2(&zs_, level, Z_DEFLATED, 31, 6, Z_DEFAULT_STRATEGY) == Z_OK;
    }
    if (!ok_ || deflateReset(&zs_) != Z_OK) return false;
    const std::size_t at = out.size();
    out.resize(at + deflateBound(&zs_, static_cast<uLong>(data.size())));
    zs_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    zs_.avail_in = static_cast<uInt>(data.size());
    zs_.next_out = reinterpret_cast<Bytef*>(out.data() + at);
    zs_.avail_out = static_cast<uInt>(out.size() - at);
    const bool done = deflate(&zs_, Z_FINISH) == Z_STREAM_END;
    out.resize(done ? at + zs_.total_out : at);
    return done;
  }

 private:
  z_stream zs_{};
  bool ok_ = false;
};

// ISA-L in one call: no state to keep or reset between members.
bool fast_append(std::string& out, std::string_view data) {
  isal_zstream zs;
  isal_deflate_stateless_init(&zs);
  zs.level = 0;  // needs no level buffer
  zs.gzip_flag = IGZIP_GZIP;
  zs.end_of_stream = 1;
  zs.flush = NO_FLUSH;
  // Incompressible input falls back to stored blocks (5 bytes per 64 KiB);
  // header and trailer on top.
  const std::size_t at = out.size();
  out.resize(at + data.size() + data.size() / 16 + ISAL_DEF_MAX_HDR_SIZE + 64);
  zs.next_in = reinterpret_cast<std::uint8_t*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<std::uint32_t>(data.size());
  zs.next_out = reinterpret_cast<std::uint8_t*>(out.data() + at);
  zs.avail_out = static_cast<std::uint32_t>(out.size() - at);
  const bool done = isal_deflate_stateless(&zs) == COMP_OK;
  out.resize(done ? at + zs.total_out : at);
  return done;
}

// A stored member written directly (RFC 1952 framing around RFC 1951 stored
// blocks): zlib at level 0 spent more on its stream setup and its CRC than on
// copying, and ISA-L has no stored-only mode. The CRC is ISA-L's (the gzip
// CRC-32, reflected, as zlib's crc32()).
void stored_append(std::string& out, std::string_view data) {
  constexpr std::size_t kMaxBlock = 65535;
  const std::size_t blocks = data.empty() ? 1 : (data.size() + kMaxBlock - 1) / kMaxBlock;
  const std::size_t at = out.size();
  out.resize(at + 10 + blocks * 5 + data.size() + 8);
  auto* p = reinterpret_cast<unsigned char*>(out.data() + at);
  // ID1 ID2, CM = deflate, FLG = 0, MTIME = 0, XFL = 0, OS = 3 (Unix), as zlib writes them.
  const unsigned char header[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
  std::memcpy(p, header, sizeof header);
  p += sizeof header;
  std::size_t done = 0;
  do {
    const std::size_t n = std::min(kMaxBlock, data.size() - done);
    const bool last = done + n == data.size();
    *p++ = last ? 1 : 0;  // BFINAL, BTYPE = 00 (stored)
    *p++ = static_cast<unsigned char>(n & 0xff);
    *p++ = static_cast<unsigned char>(n >> 8);
    *p++ = static_cast<unsigned char>(~n & 0xff);
    *p++ = static_cast<unsigned char>((~n >> 8) & 0xff);
    std::memcpy(p, data.data() + done, n);
    p += n;
    done += n;
  } while (done < data.size());
  const std::uint32_t crc = crc32_gzip_refl(0, reinterpret_cast<const unsigned char*>(data.data()), data.size());
  const auto size = static_cast<std::uint32_t>(data.size());  // ISIZE: the size modulo 2^32
  for (int i = 0; i < 4; ++i) *p++ = static_cast<unsigned char>(crc >> (8 * i));
  for (int i = 0; i < 4; ++i) *p++ = static_cast<unsigned char>(size >> (8 * i));
}

}  // namespace

bool append_gzip_member(std::string& out, std::string_view data, Compression how) {
  if (data.size() < how.min_bytes) {
    stored_append(out, data);
    return true;
  }
  // isal_zstream counts in 32 bits; records are far smaller (bodies are capped).
  if (how.codec == Compression::Codec::fast && data.size() < (1ull << 31) && fast_append(out, data)) return true;
  const int level = how.codec == Compression::Codec::fast ? 0 : std::clamp(how.level, 0, 9);
  if (level == 0) {
    stored_append(out, data);
    return true;
  }
  thread_local std::array<Deflater, 10> deflaters;
  return deflaters[static_cast<std::size_t>(level)].append(out, data, level);
}

std::optional<std::string> gzip_member(std::string_view data, Compression how) {
  std::string out;
  if (!append_gzip_member(out, data, how)) return std::nullopt;
  return out;
}

const std::string* ParsedRecord::header(std::string_view name) const {
  for (const auto& h : headers) {
    if (iequals(h.name, name)) return &h.value;
  }
  return nullptr;
}

std::optional<ParsedRecord> parse_record(std::string_view data, std::string* why) {
  auto fail = [&](const char* msg) {
    if (why) *why = msg;
    return std::optional<ParsedRecord>();
  };
  if (!data.starts_with("WARC/1.1\r\n")) return fail("not a WARC/1.1 record");
  std::size_t head_end = data.find("\r\n\r\n");
  if (head_end == std::string_view::npos) return fail("no end of WARC header");
  ParsedRecord rec;
  std::size_t pos = 10;
  while (pos < head_end + 2) {
    std::size_t eol = data.find("\r\n", pos);
    std::string_view line = data.substr(pos, eol - pos);
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) return fail("WARC header line without a colon");
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    rec.headers.push_back({std::string(line.substr(0, colon)), std::string(value)});
    pos = eol + 2;
  }
  const std::string* len_text = rec.header("Content-Length");
  std::uint64_t len = 0;
  if (!len_text) return fail("no Content-Length");
  auto r = std::from_chars(len_text->data(), len_text->data() + len_text->size(), len);
  if (r.ec != std::errc() || r.ptr != len_text->data() + len_text->size()) return fail("bad Content-Length");
  std::size_t block_at = head_end + 4;
  if (len > data.size() - block_at || data.size() - block_at - len != 4 ||
      data.substr(block_at + len) != "\r\n\r\n")
    return fail("Content-Length does not match the record");
  rec.block = data.substr(block_at, len);
  return rec;
}

Digest record_digest(std::string_view record) {
  // The header alone: it carries WARC-Block-Digest (checked against the block
  // by every reader here), so it commits to the block without hashing the
  // block a second time, the writer's largest hashing cost.
  const std::size_t head_end = record.find("\r\n\r\n");
  const std::string_view head = head_end == std::string_view::npos ? record : record.substr(0, head_end + 4);
  const std::string prefix = "\r\n" + std::string(kChainHeader) + ":";
  const std::size_t at = head.find(prefix);
  if (at == std::string_view::npos) return sha256(head);
  // A damaged record may end inside the chain line (no blank line after it).
  const std::size_t line_end = std::min(head.find("\r\n", at + 2), head.size());
  return thread_sha256().of({head.substr(0, at), head.substr(line_end)});
}

std::string_view http_payload(std::string_view block) {
  std::size_t at = block.find("\r\n\r\n");
  return at == std::string_view::npos ? std::string_view() : block.substr(at + 4);
}

MemberScan scan_members(std::string_view file, std::uint64_t start) {
  MemberScan scan;
  scan.file_size = file.size();
  scan.good_end = start;
  z_stream zs{};
  if (inflateInit2(&zs, 31) != Z_OK) {
    scan.tail_error = "zlib inflateInit2 failed";
    return scan;
  }
  std::uint64_t off = start;
  char out[65536];
  while (off < file.size()) {
    inflateReset(&zs);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(file.data() + off));
    zs.avail_in = static_cast<uInt>(std::min<std::uint64_t>(file.size() - off, 1u << 30));
    Member m;
    m.offset = off;
    int rc = Z_OK;
    while (rc == Z_OK) {
      zs.next_out = reinterpret_cast<Bytef*>(out);
      zs.avail_out = sizeof out;
      rc = inflate(&zs, Z_NO_FLUSH);
      m.data.append(out, sizeof out - zs.avail_out);
    }
    if (rc != Z_STREAM_END) {
      scan.tail_error = rc == Z_BUF_ERROR ? "incomplete gzip member (torn write)"
                                          : std::string("corrupt gzip member: ") + (zs.msg ? zs.msg : "zlib error");
      break;
    }
    m.compressed_length = zs.total_in;
    off += zs.total_in;
    scan.good_end = off;
    scan.members.push_back(std::move(m));
  }
  inflateEnd(&zs);
  return scan;
}

std::optional<MappedFile> MappedFile::open(const std::string& path, std::string* error) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (error) *error = path + ": " + std::strerror(errno);
    return std::nullopt;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    if (error) *error = path + ": " + std::strerror(errno);
    ::close(fd);
    return std::nullopt;
  }
  std::size_t size = static_cast<std::size_t>(st.st_size);
  void* data = nullptr;
  if (size > 0) {
    data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      if (error) *error = path + ": mmap: " + std::strerror(errno);
      ::close(fd);
      return std::nullopt;
    }
  }
  ::close(fd);  // the mapping outlives the descriptor
  return MappedFile(data, size);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

}  // namespace sightline::archive
