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
      {"format", "sightline-archive-manifest/2"},
      {"segment", m.segment},
      {"sha256", m.file_sha256},
      {"size", m.file_size},
      {"writer", m.writer},
      {"segment_seq", m.segment_seq},
      {"previous_segment", m.previous_segment.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(m.previous_segment)},
      {"chain_start", sha256_field(m.chain_start)},
      {"chain_head", sha256_field(m.chain_head)},
      {"first_seq", m.first_seq},
      {"record_count", m.record_count},
      {"records_file", m.records_file},
      {"records_sha256", m.records_sha256},
      {"created", m.created},
      {"sealed", m.sealed},
      {"key_fingerprint", m.key_fingerprint},
  };
  if (m.has_shipped) {
    nlohmann::ordered_json files = nlohmann::ordered_json::array();
    for (const auto& f : m.shipped)
      files.push_back({{"file", f.file}, {"key", f.key}, {"version_id", f.version_id}, {"sha256", f.sha256}});
    j["shipped"] = {{"journal_bytes", m.shipped_journal_bytes}, {"files", std::move(files)}};
  }
  return j.dump(1) + "\n";
}

void append_records_line(std::string& out, std::uint64_t seq, std::uint64_t offset, std::uint64_t length,
                         std::string_view id, std::string_view type, const Digest& digest) {
  auto number = [&out](std::uint64_t v) {
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, static_cast<std::size_t>(res.ptr - buf));
  };
  number(seq);
  out += '\t';
  number(offset);
  out += '\t';
  number(length);
  out += '\t';
  out += id;
  out += '\t';
  out += type;
  out += '\t';
  append_hex(out, digest);
  out += '\n';
}

namespace {

// One line of a records file; false when it is not one.
bool parse_records_line(std::string_view line, ManifestRecord& r) {
  std::string_view f[6];
  for (int i = 0; i < 6; ++i) {
    std::size_t tab = i < 5 ? line.find('\t') : line.size();
    if (tab == std::string_view::npos) return false;
    f[i] = line.substr(0, tab);
    line.remove_prefix(i < 5 ? tab + 1 : tab);
  }
  auto seq = parse_u64(f[0]), offset = parse_u64(f[1]), length = parse_u64(f[2]);
  auto digest = digest_from_hex(f[5]);
  if (!seq || !offset || !length || !digest || f[3].empty() || f[4].empty()) return false;
  r.seq = *seq;
  r.offset = *offset;
  r.length = *length;
  r.id = std::string(f[3]);
  r.type = std::string(f[4]);
  r.digest = *digest;
  return true;
}

}  // namespace

bool load_records(const std::string& dir, Manifest& m, std::string* why) {
  auto fail = [&](std::string msg) {
    if (why) *why = "records list " + m.records_file + ": " + std::move(msg);
    m.records.clear();
    return false;
  };
  if (m.records_file.empty()) return true;  // format /1: listed in the manifest
  std::string err;
  auto file = MappedFile::open(dir + "/" + m.records_file, &err);
  if (!file) return fail("unreadable (" + err + ")");
  std::string_view text = file->bytes();
  if (to_hex(sha256(text)) != m.records_sha256) return fail("modified: its SHA-256 is not the one the signed manifest seals");
  if (!text.starts_with(kRecordsHeader)) return fail("unknown format");
  text.remove_prefix(kRecordsHeader.size());
  m.records.clear();
  m.records.reserve(m.record_count);
  Digest chain = m.chain_start;
  while (!text.empty()) {
    std::size_t nl = text.find('\n');
    if (nl == std::string_view::npos) return fail("last line unterminated");
    ManifestRecord r;
    if (!parse_records_line(text.substr(0, nl), r))
      return fail("line " + std::to_string(m.records.size() + 2) + " unparsable");
    text.remove_prefix(nl + 1);
    r.chain = chain = chain_next(chain, r.digest);
    m.records.push_back(std::move(r));
  }
  if (m.records.size() != m.record_count || (!m.records.empty() && m.records.front().seq != m.first_seq))
    return fail("does not hold the records the signed manifest counts");
  return true;
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
    Manifest m;
    m.format = j.at("format").get<std::string>();
    const bool inline_records = m.format == "sightline-archive-manifest/1";
    if (!inline_records && m.format != "sightline-archive-manifest/2") return fail("unknown manifest format");
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
    if (auto it = j.find("shipped"); it != j.end()) {
      m.has_shipped = true;
      m.shipped_journal_bytes = it->at("journal_bytes").get<std::uint64_t>();
      for (const auto& f : it->at("files"))
        m.shipped.push_back({f.at("file").get<std::string>(), f.at("key").get<std::string>(),
                             f.at("version_id").get<std::string>(), f.at("sha256").get<std::string>()});
    }
    if (!inline_records) {
      m.first_seq = j.at("first_seq").get<std::uint64_t>();
      m.record_count = j.at("record_count").get<std::uint64_t>();
      m.records_file = j.at("records_file").get<std::string>();
      m.records_sha256 = j.at("records_sha256").get<std::string>();
      if (m.records_file != m.segment + std::string(kRecordsSuffix) || !digest_from_hex(m.records_sha256))
        return fail("bad records_file or records_sha256 in manifest");
      return m;
    }
    // Format /1 lists the records; a segment's leaves each record's chain
    // value out (it follows from chain_start and the digests).
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
    m.record_count = m.records.size();
    if (!m.records.empty()) m.first_seq = m.records.front().seq;
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
  // Per thread: the writer, the S3 shipper and a CLI command may write the
  // same sidecar at once; each renames only its own complete file.
  std::string tmp = path + "." + std::to_string(::gettid()) + ".tmp";
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
