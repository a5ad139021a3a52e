#include "archive/ship.h"

#include "archive/format.h"
#include "archive/index.h"
#include "archive/warc.h"
#include "hooks/pcap.h"
#include "tls/ossl.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>

namespace sightline::archive {
namespace {

namespace fs = std::filesystem;
using hooks::pcap::UniqueFd;
constexpr std::string_view kJournal = "shipping.journal";
constexpr std::chrono::seconds kMinLock{10};

std::string now_text() { return s3::iso8601(std::chrono::system_clock::now()); }

std::string sha256_hex_of(std::string_view data) {
  Digest d = sha256(data);
  return to_hex(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}

// SHA-256 (hex) and MD5 (hex) of a file, streamed.
struct FileDigests {
  std::string sha256;
  std::string md5;
  std::uint64_t size = 0;
};
std::optional<FileDigests> digest_file(const std::string& path, std::string* why) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *why = "cannot read " + path;
    return std::nullopt;
  }
  tls::EvpMdCtxPtr sha(EVP_MD_CTX_new()), md5(EVP_MD_CTX_new());
  if (!sha || !md5 || EVP_DigestInit_ex(sha.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestInit_ex(md5.get(), EVP_md5(), nullptr) != 1) {
    *why = "digest init failed";
    return std::nullopt;
  }
  FileDigests d;
  std::string buf(1 << 20, '\0');
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    auto n = static_cast<std::size_t>(in.gcount());
    if (n == 0) break;
    EVP_DigestUpdate(sha.get(), buf.data(), n);
    EVP_DigestUpdate(md5.get(), buf.data(), n);
    d.size += n;
  }
  if (in.bad()) {
    *why = "read error on " + path;
    return std::nullopt;
  }
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(sha.get(), out, &len);
  d.sha256 = to_hex(std::string_view(reinterpret_cast<const char*>(out), len));
  EVP_DigestFinal_ex(md5.get(), out, &len);
  d.md5 = to_hex(std::string_view(reinterpret_cast<const char*>(out), len));
  return d;
}

std::string to_line(const nlohmann::json& j) {
  // Values from the store's headers may be anything: never throw on them.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string to_line(const ShippedFile& f) {
  return to_line(nlohmann::json{{"segment", f.segment}, {"file", f.file}, {"key", f.key},
                                {"version_id", f.version_id}, {"etag", f.etag}, {"sha256", f.sha256},
                                {"size", f.size}, {"retain_until", f.retain_until}, {"shipped_at", f.shipped_at},
                                {"adopted", f.adopted}});
}

std::string str(const nlohmann::json& j, const char* name) {
  auto it = j.find(name);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

std::optional<ShipJournal> ShipJournal::open(const std::string& dir, std::string* why) {
  ShipJournal j;
  j.path_ = (fs::path(dir) / kJournal).string();
  // One shipper per directory: the proxy's, or `archive ship`, not both.
  // The proxy starts its shipper before the writer has made the directory.
  std::error_code ec;
  fs::create_directories(dir, ec);
  const std::string lock_path = (fs::path(dir) / ".ship.lock").string();
  j.lock_.reset(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640));
  if (!j.lock_) {
    *why = errno_text("create", lock_path, errno);
    return std::nullopt;
  }
  if (::flock(j.lock_.get(), LOCK_EX | LOCK_NB) != 0) {
    *why = dir + ": another shipper (the proxy's [archive.s3], or sightline archive ship) is using it";
    return std::nullopt;
  }
  std::string text;
  if (auto t = read_text_file(j.path_)) text = std::move(*t);
  std::size_t good = 0;  // bytes of whole, parsed lines
  std::size_t at = 0;
  while (at < text.size()) {
    auto nl = text.find('\n', at);
    if (nl == std::string::npos) break;  // torn: no newline
    auto line = nlohmann::json::parse(text.begin() + static_cast<std::ptrdiff_t>(at),
                                      text.begin() + static_cast<std::ptrdiff_t>(nl), nullptr, false);
    const bool readable = line.is_object() && !str(line, "segment").empty() &&
                          (line.value("complete", false) ? true : !str(line, "file").empty());
    if (!readable) {
      if (text.find('\n', nl + 1) != std::string::npos) {
        *why = j.path_ + ": unreadable line at byte " + std::to_string(at) + " (not a torn tail: fix by hand)";
        return std::nullopt;
      }
      break;
    }
    if (line.value("complete", false) == true) {
      j.mark_complete(str(line, "segment"), str(line, "at"));
    } else {
      ShippedFile f;
      f.segment = str(line, "segment");
      f.file = str(line, "file");
      f.key = str(line, "key");
      f.version_id = str(line, "version_id");
      f.etag = str(line, "etag");
      f.sha256 = str(line, "sha256");
      if (auto it = line.find("size"); it != line.end() && it->is_number_unsigned()) f.size = it->get<std::uint64_t>();
      f.retain_until = str(line, "retain_until");
      f.shipped_at = str(line, "shipped_at");
      f.adopted = line.value("adopted", false) == true;
      j.files_[f.file] = std::move(f);
    }
    at = nl + 1;
    good = at;
  }
  if (good < text.size()) {
    // A crash mid-append: the line was never confirmed to anyone; cut it.
    j.cut_bytes_ = text.size() - good;
    if (::truncate(j.path_.c_str(), static_cast<off_t>(good)) != 0) {
      *why = errno_text("truncate", j.path_, errno);
      return std::nullopt;
    }
  }
  return j;
}

// Memory stays bounded by what is in flight: a complete segment keeps one
// small entry (its manifest's key and version, for logs and tombstones),
// not its files'.
void ShipJournal::mark_complete(const std::string& segment, const std::string& at) {
  CompleteSegment c;
  c.at = at;
  if (auto it = files_.find(segment + std::string(kManifestSuffix)); it != files_.end()) {
    c.manifest_key = it->second.key;
    c.manifest_version = it->second.version_id;
  }
  for (auto it = files_.begin(); it != files_.end();)
    it = it->second.segment == segment ? files_.erase(it) : std::next(it);
  complete_[segment] = std::move(c);
}

const ShippedFile* ShipJournal::find(const std::string& file) const {
  auto it = files_.find(file);
  return it == files_.end() ? nullptr : &it->second;
}

std::optional<std::string> ShipJournal::append(const std::string& line) {
  UniqueFd fd(::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640));
  if (!fd) return errno_text("open", path_, errno);
  std::string text = line + "\n";
  const char* p = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    ssize_t n = ::write(fd.get(), p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return errno_text("write", path_, errno);
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (::fdatasync(fd.get()) != 0) return errno_text("fdatasync", path_, errno);
  return std::nullopt;
}

std::optional<std::string> ShipJournal::record(const ShippedFile& f) {
  if (auto e = append(to_line(f))) return e;
  files_[f.file] = f;
  return std::nullopt;
}

std::optional<std::string> ShipJournal::record_complete(const std::string& segment,
                                                        const std::string& manifest_version) {
  const std::string at = now_text();
  if (auto e = append(to_line(nlohmann::json{
          {"segment", segment}, {"complete", true}, {"manifest_version_id", manifest_version}, {"at", at}})))
    return e;
  mark_complete(segment, at);
  return std::nullopt;
}

std::string file_sha256_hex(const std::string& path) {
  std::string why;
  auto d = digest_file(path, &why);
  return d ? d->sha256 : std::string();
}

std::string ship_key(const s3::Client& client, const std::string& node, const std::string& sealed_rfc3339,
                     const std::string& file) {
  // "2026-11-27T..." -> "2026/11/27"
  std::string day = sealed_rfc3339.size() >= 10 ? sealed_rfc3339.substr(0, 4) + "/" + sealed_rfc3339.substr(5, 2) +
                                                      "/" + sealed_rfc3339.substr(8, 2)
                                                : "unknown";
  return client.key(node + "/" + day + "/" + file);
}

namespace {

struct SegmentToShip {
  std::string name;
  Manifest manifest;
  std::int64_t sealed_us = 0;
  std::vector<std::string> files;  // in upload order, manifest and signature last
  std::uint64_t bytes = 0;
};

// Reads the version's retention back; sets it when the store left it out
// (Ceph RGW 16 ignores lock headers on multipart uploads).
std::optional<std::string> confirm_retention(s3::Client& client, const std::string& key, const std::string& version,
                                             s3::LockMode mode, std::chrono::system_clock::time_point until,
                                             bool* transport_down) {
  const std::string want_mode(s3::lock_mode_name(mode)), want_until = s3::iso8601(until);
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::string why;
    auto got = client.get_retention(key, version, &why);
    if (!got && !why.empty()) {
      if (why.rfind("HTTP ", 0) != 0) *transport_down = true;  // no HTTP answer at all
      return "retention of " + key + ": " + why;
    }
    // "2026-11-27T19:14:39Z" vs "2026-11-27T19:14:39.000000000Z": seconds compared.
    if (got && got->first == want_mode && got->second.substr(0, 19) >= want_until.substr(0, 19)) return std::nullopt;
    if (attempt == 1) break;
    s3::Response r = client.put_retention(key, version, mode,
                                          std::max(until, std::chrono::system_clock::now() + kMinLock));
    if (!r.ok()) {
      if (r.status == 0) *transport_down = true;
      return "setting retention of " + key + ": " + r.error;
    }
  }
  return "the store does not report " + want_mode + " retention until " + want_until + " on " + key;
}

// Uploads (or adopts) one file; the error text names what failed.
std::optional<std::string> ship_file(const ShipOptions& opts, s3::Client& client, ShipJournal& journal,
                                     const SegmentToShip& seg, const std::string& node, const std::string& file,
                                     ShipReport& report, bool* transport_down) {
  if (journal.find(file)) return std::nullopt;
  const std::string path = (fs::path(opts.dir) / file).string();
  std::string why;
  auto d = digest_file(path, &why);
  if (!d) return why;
  if (file == seg.name && d->sha256 != seg.manifest.file_sha256)
    return "segment's SHA-256 differs from its manifest's file_sha256: not shipped (run archive verify)";
  if (file == seg.manifest.records_file && d->sha256 != seg.manifest.records_sha256)
    return "records file's SHA-256 differs from its manifest's records_sha256: not shipped (run archive verify)";
  ShippedFile f;
  f.segment = seg.name;
  f.file = file;
  f.key = ship_key(client, node, seg.manifest.sealed, file);
  f.sha256 = d->sha256;
  f.size = d->size;
  s3::PutOptions po;
  po.lock_mode = opts.lock_mode;
  if (opts.lock_mode) {
    auto until = std::chrono::system_clock::time_point(std::chrono::microseconds(seg.sealed_us)) + opts.retention;
    // A segment shipped after its retention ended (a long outage) still gets
    // a date the store accepts: a short one, since nothing requires more.
    until = std::max(until, std::chrono::system_clock::now() + kMinLock);
    po.retain_until = until;
    f.retain_until = s3::iso8601(until);
  }
  po.legal_hold = opts.legal_hold;
  po.metadata["sha256"] = d->sha256;
  po.metadata["sightline-segment"] = seg.name;
  // Confirmed before a crash, never journaled: the object is there already.
  // Adopted only with the same SHA-256 (set by our PUT, checked by the
  // store against x-amz-content-sha256) and size; lock and hold are then
  // confirmed below like a fresh upload's.
  s3::Response h = client.head(f.key);
  if (h.ok() && h.header("x-amz-meta-sha256") == d->sha256 && h.header("content-length") == std::to_string(d->size) &&
      !h.header("x-amz-version-id").empty()) {
    f.version_id = h.header("x-amz-version-id");
    f.etag = h.header("etag");
    if (f.etag.size() >= 2 && f.etag.front() == '"') f.etag = f.etag.substr(1, f.etag.size() - 2);
    f.adopted = true;
  } else {
    if (h.status == 0) {
      *transport_down = true;
      return "S3 unreachable: " + h.error;
    }
    s3::PutResult r;
    if (d->size > opts.multipart_threshold) {
      r = client.put_file_multipart(f.key, path, opts.part_size, po, d->sha256, d->size);
    } else {
      // The store checks Content-MD5 and x-amz-content-sha256 of these very
      // bytes (its ETag is not an MD5 under SSE-KMS: not compared).
      auto bytes = read_text_file(path);
      if (!bytes || bytes->size() != d->size || sha256_hex_of(*bytes) != d->sha256)
        return "cannot read " + path + " as it was checked";
      r = client.put(f.key, *bytes, po);
    }
    if (!r.response.ok()) {
      if (r.response.status == 0) *transport_down = true;
      return "PUT " + f.key + ": " + r.response.error;
    }
    if (r.version_id.empty())
      return "PUT " + f.key + ": no version id in the answer (is the bucket versioned with Object Lock?)";
    f.version_id = r.version_id;
    f.etag = r.etag;
    if (d->size > opts.multipart_threshold) {
      // Parts are checked one by one; the whole object is checked here.
      s3::Response v = client.head(f.key, f.version_id);
      if (!v.ok() || v.header("content-length") != std::to_string(d->size))
        return "HEAD " + f.key + " after multipart upload: " + (v.ok() ? "size " + v.header("content-length") : v.error);
      if (f.etag.empty()) f.etag = v.header("etag");
      if (f.etag.size() >= 2 && f.etag.front() == '"') f.etag = f.etag.substr(1, f.etag.size() - 2);
    }
  }
  if (po.lock_mode) {
    // Counted only once the store reports the lock on this very version.
    if (auto e = confirm_retention(client, f.key, f.version_id, *po.lock_mode, po.retain_until, transport_down))
      return *e;
  }
  if (po.legal_hold && !(f.adopted && h.header("x-amz-object-lock-legal-hold") == "ON")) {
    s3::Response lh = client.put_legal_hold(f.key, f.version_id, true);
    if (!lh.ok()) {
      if (lh.status == 0) *transport_down = true;
      return "legal hold on " + f.key + ": " + lh.error;
    }
  }
  f.shipped_at = now_text();
  if (auto e = journal.record(f)) return "journal: " + *e;
  report.shipped.push_back(std::move(f));
  return std::nullopt;
}

}  // namespace

ShipReport ship_sealed(const ShipOptions& opts, s3::Client& client, ShipJournal& journal) {
  ShipReport report;
  std::string why;
  auto names = segment_files(opts.dir, &why);
  if (!names) {
    report.errors.push_back(opts.dir + ": " + why);
    return report;
  }
  std::vector<SegmentToShip> pending;
  for (const auto& n : *names) {
    auto sn = parse_segment_name(n);
    if (!sn || sn->open || journal.complete(n)) continue;
    const std::string base = (fs::path(opts.dir) / n).string();
    auto text = read_text_file(base + std::string(kManifestSuffix));
    if (!text) continue;  // sealing: the manifest comes last
    SegmentToShip s;
    s.name = n;
    auto m = parse_manifest(*text, &why);
    if (!m) {
      report.errors.push_back(n + ": manifest: " + why);
      continue;
    }
    s.manifest = std::move(*m);
    auto sealed = parse_time(s.manifest.sealed);
    if (!sealed) {
      report.errors.push_back(n + ": manifest's sealed time '" + s.manifest.sealed + "' unreadable");
      continue;
    }
    s.sealed_us = *sealed;
    s.files.push_back(n);
    // The sidecar `archive search` uses over S3; built now when missing.
    std::string idx_err;
    (void)load_index(opts.dir, n, &idx_err);
    if (!s.manifest.records_file.empty()) s.files.push_back(s.manifest.records_file);
    std::error_code exists_ec;
    if (fs::exists(base + std::string(kIndexSuffix), exists_ec)) s.files.push_back(n + std::string(kIndexSuffix));
    s.files.push_back(n + std::string(kManifestSuffix));
    s.files.push_back(n + std::string(kSignatureSuffix));
    std::error_code ec;
    for (const auto& f : s.files) {
      auto sz = fs::file_size(fs::path(opts.dir) / f, ec);
      if (!ec) s.bytes += sz;
    }
    pending.push_back(std::move(s));
  }
  std::sort(pending.begin(), pending.end(), [](const auto& a, const auto& b) { return a.sealed_us < b.sealed_us; });
  bool down = false;
  for (const auto& seg : pending) {
    if (down || (opts.stop && opts.stop->load(std::memory_order_relaxed))) break;
    const std::string node = opts.node_id.empty() ? seg.manifest.writer : opts.node_id;
    std::optional<std::string> err;
    for (const auto& f : seg.files) {
      if (opts.stop && opts.stop->load(std::memory_order_relaxed)) {
        err = "stopped";
        break;
      }
      err = ship_file(opts, client, journal, seg, node, f, report, &down);
      if (err) break;
    }
    if (!err) {
      const ShippedFile* manifest = journal.find(seg.name + std::string(kManifestSuffix));
      err = journal.record_complete(seg.name, manifest ? manifest->version_id : std::string());
    }
    if (err) {
      report.errors.push_back(seg.name + ": " + *err);
      continue;
    }
    report.done_segments.push_back(seg.name);
  }
  const auto now_us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  for (const auto& seg : pending) {
    if (journal.complete(seg.name)) continue;
    ++report.backlog_segments;
    report.backlog_bytes += seg.bytes;
    report.oldest_backlog_s = std::max<std::int64_t>(report.oldest_backlog_s, (now_us - seg.sealed_us) / 1000000);
  }
  return report;
}

}  // namespace sightline::archive
