#include "archive/format.h"

#include "core/log.h"

#include "hooks/pcap.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>

namespace sightline::archive {

namespace {

bool all_digits(std::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
}

}  // namespace

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  std::uint64_t v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::string sha256_field(const Digest& d) { return "sha256:" + to_hex(d); }

std::optional<Digest> parse_sha256_field(std::string_view text) {
  if (!text.starts_with("sha256:")) return std::nullopt;
  return digest_from_hex(text.substr(7));
}

bool valid_writer_id(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

std::string segment_name(std::string_view writer, WallClock::time_point created, std::uint64_t seq) {
  std::time_t secs = WallClock::to_time_t(created);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
  char num[24];
  std::snprintf(num, sizeof num, "%06llu", static_cast<unsigned long long>(seq));
  return std::string(writer) + "-" + stamp + "-" + num + std::string(kSealedSuffix);
}

std::optional<SegmentName> parse_segment_name(std::string_view n) {
  SegmentName out;
  if (n.ends_with(kOpenSuffix)) {
    out.open = true;
    n.remove_suffix(kOpenSuffix.size() - kSealedSuffix.size());
  }
  if (!n.ends_with(kSealedSuffix)) return std::nullopt;
  out.sealed_name = std::string(n);
  n.remove_suffix(kSealedSuffix.size());
  std::size_t d2 = n.rfind('-');
  if (d2 == std::string_view::npos || d2 == 0) return std::nullopt;
  std::size_t d1 = n.rfind('-', d2 - 1);
  if (d1 == std::string_view::npos) return std::nullopt;
  std::string_view writer = n.substr(0, d1), stamp = n.substr(d1 + 1, d2 - d1 - 1), seq = n.substr(d2 + 1);
  if (!valid_writer_id(writer) || stamp.size() != 16 || seq.size() < 6 || !all_digits(seq)) return std::nullopt;
  auto v = parse_u64(seq);
  if (!v) return std::nullopt;
  out.writer = std::string(writer);
  out.seq = *v;
  return out;
}

std::string manifest_json(const Manifest& m) {
  nlohmann::ordered_json j = {
      {"format", "sightline-archive-manifest/1"},
      {"segment", m.segment},
      {"sha256", m.file_sha256},
      {"size", m.file_size},
      {"writer", m.writer},
      {"segment_seq", m.segment_seq},
      {"previous_segment", m.previous_segment.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(m.previous_segment)},
      {"chain_start", sha256_field(m.chain_start)},
      {"chain_head", sha256_field(m.chain_head)},
      {"created", m.created},
      {"sealed", m.sealed},
      {"key_fingerprint", m.key_fingerprint},
  };
  std::string out = j.dump(1);
  // The record list is written as text, one object per line: a segment
  // holds up to millions of records, and a JSON tree of them cost more than
  // writing the records themselves.
  out.pop_back();  // the closing brace
  while (!out.empty() && out.back() == '\n') out.pop_back();
  out += ",\n \"records\": [";
  out.reserve(out.size() + m.records.size() * 260);
  bool first = true;
  // Appended piece by piece: a segment's manifest lists ~a million records,
  // and temporary strings per field were most of the seal's CPU.
  auto number = [&out](std::uint64_t v) {
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, static_cast<std::size_t>(res.ptr - buf));
  };
  for (const auto& r : m.records) {
    out += first ? "\n  {\"seq\":" : ",\n  {\"seq\":";
    first = false;
    number(r.seq);
    out += ",\"offset\":";
    number(r.offset);
    out += ",\"length\":";
    number(r.length);
    out += ",\"id\":\"";
    log::append_json_escaped(out, r.id);
    out += "\",\"type\":\"";
    log::append_json_escaped(out, r.type);
    out += "\",\"digest\":\"sha256:";
    append_hex(out, r.digest);
    out += "\"}";  // no chain value: it follows from chain_start and the digests
  }
  out += first ? "]\n}\n" : "\n ]\n}\n";
  return out;
}

std::optional<Manifest> parse_manifest(std::string_view text, std::string* why) {
  auto fail = [&](std::string msg) {
    if (why) *why = std::move(msg);
    return std::optional<Manifest>();
  };
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail("manifest is not JSON");
  auto digest = [](const nlohmann::json& v) -> std::optional<Digest> {
    if (!v.is_string()) return std::nullopt;
    return parse_sha256_field(v.get<std::string>());
  };
  try {
    if (j.at("format") != "sightline-archive-manifest/1") return fail("unknown manifest format");
    Manifest m;
    m.segment = j.at("segment").get<std::string>();
    m.file_sha256 = j.at("sha256").get<std::string>();
    m.file_size = j.at("size").get<std::uint64_t>();
    m.writer = j.at("writer").get<std::string>();
    m.segment_seq = j.at("segment_seq").get<std::uint64_t>();
    if (!j.at("previous_segment").is_null()) m.previous_segment = j.at("previous_segment").get<std::string>();
    auto start = digest(j.at("chain_start"));
    auto head = digest(j.at("chain_head"));
    if (!start || !head) return fail("bad chain value in manifest");
    m.chain_start = *start;
    m.chain_head = *head;
    m.created = j.at("created").get<std::string>();
    m.sealed = j.at("sealed").get<std::string>();
    m.key_fingerprint = j.at("key_fingerprint").get<std::string>();
    // A segment's manifest leaves each record's chain value out (it follows
    // from chain_start and the digests); an export's lists it, its records
    // not being consecutive.
    Digest chain = m.chain_start;
    const auto& records = j.at("records");
    m.records.reserve(records.size());
    for (const auto& r : records) {
      ManifestRecord mr;
      mr.seq = r.at("seq").get<std::uint64_t>();
      mr.offset = r.at("offset").get<std::uint64_t>();
      mr.length = r.at("length").get<std::uint64_t>();
      mr.id = r.at("id").get<std::string>();
      mr.type = r.at("type").get<std::string>();
      auto d = digest(r.at("digest"));
      auto c = r.contains("chain") ? digest(r.at("chain")) : std::optional<Digest>(chain_next(chain, d.value_or(Digest{})));
      if (!d || !c) return fail("bad digest in manifest record " + std::to_string(mr.seq));
      mr.digest = *d;
      mr.chain = chain = *c;
      m.records.push_back(std::move(mr));
    }
    return m;
  } catch (const nlohmann::json::exception& e) {
    return fail(std::string("manifest field: ") + e.what());
  }
}

std::optional<std::string> peek_manifest_sha256(const std::string& manifest_path) {
  hooks::pcap::UniqueFd fd(::open(manifest_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return std::nullopt;
  char head[1024];
  ssize_t n = ::pread(fd.get(), head, sizeof head, 0);
  if (n <= 0) return std::nullopt;
  std::string_view text(head, static_cast<std::size_t>(n));
  constexpr std::string_view key = "\n \"sha256\": \"";
  std::size_t at = text.find(key);
  if (at == std::string_view::npos || at + key.size() + 65 > text.size()) return std::nullopt;
  std::string_view hex = text.substr(at + key.size(), 64);
  if (text[at + key.size() + 64] != '"' || !digest_from_hex(hex)) return std::nullopt;
  return std::string(hex);
}

std::optional<std::string> read_text_file(const std::string& path) {
  auto f = MappedFile::open(path, nullptr);
  if (!f) return std::nullopt;
  return std::string(f->bytes());
}

std::string errno_text(std::string_view what, const std::string& path, int err) {
  return std::string(what) + " " + path + ": " + std::strerror(err);
}

bool fsync_dir(const std::string& dir) {
  hooks::pcap::UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  return fd && ::fsync(fd.get()) == 0;
}

std::optional<std::string> write_all_at(int fd, std::string_view data, std::uint64_t offset, const std::string& path) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return errno_text("write", path, n < 0 ? errno : ENOSPC);
    done += static_cast<std::size_t>(n);
  }
  return std::nullopt;
}

std::optional<std::string> write_file_durably(const std::string& path, std::string_view text, unsigned mode) {
  std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  hooks::pcap::UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, static_cast<mode_t>(mode)));
  if (!fd) return errno_text("create", tmp, errno);
  if (auto e = write_all_at(fd.get(), text, 0, tmp)) return e;
  if (::fsync(fd.get()) != 0) return errno_text("fsync", tmp, errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return errno_text("rename", tmp, errno);
  return std::nullopt;
}

RecordInfo inspect_record(const Member& m) {
  RecordInfo info;
  info.offset = m.offset;
  info.length = m.compressed_length;
  info.digest = record_digest(m.data);
  std::string why;
  auto rec = parse_record(m.data, &why);
  if (!rec) {
    info.problem = why;
    return info;
  }
  auto field = [&](std::string_view name) { return rec->header(name); };
  if (const auto* v = field("WARC-Record-ID")) info.id = *v;
  if (const auto* v = field("WARC-Type")) info.type = *v;
  if (const auto* v = field(kSeqHeader)) info.seq = parse_u64(*v);
  if (const auto* v = field(kChainHeader)) info.chain = parse_sha256_field(*v);
  const auto* block_digest = field("WARC-Block-Digest");
  if (!block_digest || *block_digest != warc_digest(rec->block)) {
    info.problem = "WARC-Block-Digest does not match the block";
    return info;
  }
  if (const auto* payload_digest = field("WARC-Payload-Digest");
      payload_digest && *payload_digest != warc_digest(http_payload(rec->block))) {
    info.problem = "WARC-Payload-Digest does not match the HTTP body";
    return info;
  }
  if (info.id.empty() || info.type.empty() || !info.seq || !info.chain)
    info.problem = "missing WARC-Record-ID, WARC-Type or sightline chain fields";
  return info;
}

std::optional<std::string> chain_link_problem(const RecordInfo& r, const Digest& prev) {
  if (!r.chain) return "no chain value";
  if (*r.chain != chain_next(prev, r.digest)) return "chain value does not follow from the previous record";
  return std::nullopt;
}

}  // namespace sightline::archive
