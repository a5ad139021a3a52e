#include "archive/s3.h"

#include "archive/warc.h"
#include "core/private_file.h"
#include "tls/ossl.h"

#include <curl/curl.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <mutex>

namespace sightline::archive::s3 {
namespace {

struct CurlDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

void global_init() {
  // Not thread-safe in libcurl 7.88: once per process, before any handle.
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

// RFC 3986 unreserved characters pass; everything else is %XX (upper case,
// as SigV4's canonical form wants). '/' passes in keys only.
std::string uri_encode(std::string_view s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string base64(const unsigned char* data, std::size_t n) {
  std::string out(4 * ((n + 2) / 3) + 1, '\0');
  int len = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data, static_cast<int>(n));
  out.resize(static_cast<std::size_t>(len));
  return out;
}

std::string md5_base64(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_md5(), nullptr);
  return base64(md, len);
}

std::string sha256_hex(std::string_view data) {
  Digest d = sha256(data);
  return to_hex(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}

std::string xml_unescape(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    static const std::pair<std::string_view, char> entities[] = {
        {"&quot;", '"'}, {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&apos;", '\''}};
    bool done = false;
    for (auto [name, ch] : entities) {
      if (s.substr(i, name.size()) == name) {
        out += ch;
        i += name.size() - 1;
        done = true;
        break;
      }
    }
    if (!done) out += '&';
  }
  return out;
}

// The text of the first <tag>...</tag> in `xml` from `from`; S3's answers
// are flat enough that this needs no XML parser.
std::optional<std::string> xml_text(std::string_view xml, std::string_view tag, std::size_t from = 0) {
  const std::string open = "<" + std::string(tag) + ">", close = "</" + std::string(tag) + ">";
  auto a = xml.find(open, from);
  if (a == std::string_view::npos) return std::nullopt;
  a += open.size();
  auto b = xml.find(close, a);
  if (b == std::string_view::npos) return std::nullopt;
  return xml_unescape(xml.substr(a, b - a));
}

std::string unquote(std::string s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') return s.substr(1, s.size() - 2);
  return s;
}

// Bodies kept in memory (error documents, listings, small objects) and
// headers are bounded: a misbehaving store cannot grow the proxy's memory.
constexpr std::size_t kMaxBody = 16u << 20;
constexpr std::size_t kMaxHeaders = 200;

// libcurl callbacks: C frames, so nothing may throw through them; a
// callback that returns short makes libcurl abort the transfer.
std::size_t on_header(char* data, std::size_t size, std::size_t n, void* user) noexcept try {
  auto* r = static_cast<Response*>(user);
  std::string_view line(data, size * n);
  if (line.rfind("HTTP/", 0) == 0) {
    r->headers.clear();  // a 100 Continue's headers are not the answer's
    r->success_status = false;
    auto sp = line.find(' ');
    if (sp != std::string_view::npos && sp + 1 < line.size() && line[sp + 1] == '2') r->success_status = true;
    return size * n;
  }
  auto colon = line.find(':');
  if (colon != std::string_view::npos) {
    if (r->headers.size() >= kMaxHeaders) return 0;
    r->headers[lower(trim(line.substr(0, colon)))] = std::string(trim(line.substr(colon + 1)));
  }
  return size * n;
} catch (...) {
  return 0;
}

struct Upload {
  std::string_view data;
  std::size_t at = 0;
};

std::size_t on_read(char* buf, std::size_t size, std::size_t n, void* user) noexcept {
  auto* u = static_cast<Upload*>(user);
  std::size_t k = std::min(size * n, u->data.size() - u->at);
  std::copy_n(u->data.data() + u->at, k, buf);
  u->at += k;
  return k;
}

void put_headers(std::vector<std::string>& h, std::string_view data, const PutOptions& po, bool with_lock) {
  h.push_back("Content-MD5: " + md5_base64(data));
  h.push_back("x-amz-content-sha256: " + sha256_hex(data));
  if (!with_lock) return;
  if (po.lock_mode) {
    h.push_back("x-amz-object-lock-mode: " + std::string(lock_mode_name(*po.lock_mode)));
    h.push_back("x-amz-object-lock-retain-until-date: " + iso8601(po.retain_until));
  }
  if (po.legal_hold) h.emplace_back("x-amz-object-lock-legal-hold: ON");
  for (const auto& [k, v] : po.metadata) h.push_back("x-amz-meta-" + k + ": " + v);
}

}  // namespace

std::string Response::header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

std::string_view lock_mode_name(LockMode m) { return m == LockMode::compliance ? "COMPLIANCE" : "GOVERNANCE"; }

std::string iso8601(std::chrono::system_clock::time_point t) {
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::optional<Target> parse_target(std::string_view url, bool virtual_host, std::string* why) {
  Target t;
  t.virtual_host = virtual_host;
  auto sep = url.find("://");
  if (sep == std::string_view::npos) {
    *why = "expected http(s)://host[:port]/bucket[/prefix]";
    return std::nullopt;
  }
  t.scheme = lower(url.substr(0, sep));
  if (t.scheme != "http" && t.scheme != "https") {
    *why = "scheme must be http or https";
    return std::nullopt;
  }
  std::string_view rest = url.substr(sep + 3);
  auto slash = rest.find('/');
  t.host = std::string(rest.substr(0, slash));
  if (t.host.empty() || t.host.find('@') != std::string::npos) {
    *why = "no host (and credentials never go in the URL)";
    return std::nullopt;
  }
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  if (virtual_host) {
    auto dot = t.host.find('.');
    t.bucket = t.host.substr(0, dot);
    t.prefix = std::string(path);
  } else {
    auto s2 = path.find('/');
    t.bucket = std::string(path.substr(0, s2));
    if (s2 != std::string_view::npos) t.prefix = std::string(path.substr(s2 + 1));
  }
  if (t.bucket.empty()) {
    *why = virtual_host ? "no bucket: the host's first label names it" : "no bucket in the path";
    return std::nullopt;
  }
  bool dot_segment = false;
  for (std::size_t at = 0; at <= t.prefix.size();) {
    auto next = t.prefix.find('/', at);
    std::string_view seg = std::string_view(t.prefix).substr(at, next == std::string::npos ? std::string::npos : next - at);
    dot_segment = dot_segment || seg == "." || seg == "..";
    if (next == std::string::npos) break;
    at = next + 1;
  }
  // "." and ".." would be resolved away by the HTTP client, not by S3.
  if (t.prefix.find_first_of("?#%") != std::string::npos || t.prefix.find("//") != std::string::npos || dot_segment ||
      t.bucket == "." || t.bucket == "..") {
    *why = "prefix must be a plain path (no '.' or '..' segments, '?', '#' or '%')";
    return std::nullopt;
  }
  return t;
}

std::string to_string(const Target& t) {
  std::string out = t.scheme + "://" + t.host + "/";
  if (!t.virtual_host) out += t.bucket + (t.prefix.empty() ? "" : "/");
  return out + t.prefix;
}

std::optional<Credentials> resolve_credentials(const std::string& access_key, const std::string& secret_key,
                                               const std::string& file, std::string* why) {
  if (!access_key.empty() || !secret_key.empty()) {
    if (access_key.empty() || secret_key.empty()) {
      *why = "access_key and secret_key go together";
      return std::nullopt;
    }
    return Credentials{access_key, secret_key};
  }
  if (!file.empty()) {
    if (std::string reason; !core::check_private_file(file, "credentials file", reason)) {
      *why = std::move(reason);
      return std::nullopt;
    }
    std::ifstream in(file);
    if (!in) {
      *why = "cannot read credentials file " + file;
      return std::nullopt;
    }
    Credentials c;
    std::vector<std::string> plain;
    std::string line;
    while (std::getline(in, line)) {
      std::string_view l = trim(line);
      if (l.empty() || l.front() == '#' || l.front() == '[') continue;
      auto eq = l.find('=');
      if (eq != std::string_view::npos) {
        std::string name = lower(trim(l.substr(0, eq)));
        std::string value(trim(l.substr(eq + 1)));
        if (name == "aws_access_key_id") c.access_key = value;
        if (name == "aws_secret_access_key") c.secret_key = value;
      } else {
        plain.emplace_back(l);
      }
    }
    if (c.access_key.empty() && plain.size() >= 2) c = {plain[0], plain[1]};
    if (c.access_key.empty() || c.secret_key.empty()) {
      *why = "credentials file " + file + " has no access key and secret key";
      return std::nullopt;
    }
    return c;
  }
  const char* ak = std::getenv("AWS_ACCESS_KEY_ID");
  const char* sk = std::getenv("AWS_SECRET_ACCESS_KEY");
  if (ak && sk && *ak && *sk) return Credentials{ak, sk};
  *why = "no S3 credentials: set access_key/secret_key, credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY";
  return std::nullopt;
}

struct Client::Curl {
  std::unique_ptr<CURL, CurlDeleter> handle;
};

Client::Client(ClientOptions opts) : opts_(std::move(opts)), curl_(std::make_unique<Curl>()) { global_init(); }

Client::~Client() = default;

std::string Client::key(std::string_view name) const {
  return opts_.target.prefix.empty() ? std::string(name) : opts_.target.prefix + "/" + std::string(name);
}

Response Client::request(const std::string& method, const std::string& key, const std::string& query,
                         std::string_view body, const std::vector<std::string>& headers, std::FILE* sink) {
  Response r;
  if (!curl_->handle) curl_->handle.reset(curl_easy_init());
  CURL* c = curl_->handle.get();
  if (!c) {
    r.error = "curl_easy_init failed";
    return r;
  }
  curl_easy_reset(c);  // keeps the connection and TLS session caches
  const Target& t = opts_.target;
  // SigV4's canonical request is built by libcurl from the URL as given:
  // the key is encoded here, the query arrives sorted and encoded.
  std::string url = t.scheme + "://" + t.host + "/";
  if (!t.virtual_host) url += t.bucket + (key.empty() ? "" : "/");
  url += uri_encode(key, true);
  if (!query.empty()) url += "?" + query;
  const std::string sigv4 = "aws:amz:" + opts_.region + ":s3";
  SlistPtr list;
  auto add = [&](const std::string& h) {
    curl_slist* n = curl_slist_append(list.get(), h.c_str());
    if (n) {
      (void)list.release();
      list.reset(n);
    }
  };
  for (const auto& h : headers) add(h);
  // Every request states its payload hash: Ceph RGW refuses SigV4 without it.
  if (std::none_of(headers.begin(), headers.end(),
                   [](const std::string& h) { return lower(h).rfind("x-amz-content-sha256:", 0) == 0; }))
    add("x-amz-content-sha256: " + sha256_hex(body));
  // No "Expect:" override: libcurl would sign the empty header it then
  // leaves out. Large PUTs wait for 100 Continue; on_header drops its lines.
  Upload up{body};
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_AWS_SIGV4, sigv4.c_str());
  curl_easy_setopt(c, CURLOPT_USERNAME, opts_.credentials.access_key.c_str());
  curl_easy_setopt(c, CURLOPT_PASSWORD, opts_.credentials.secret_key.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, list.get());
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
  // A sink gets 2xx bodies only: an error's XML body stays in r.body.
  struct Sink {
    std::FILE* file;
    Response* r;
  } sink_state{sink, &r};
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, +[](char* data, std::size_t size, std::size_t n, void* user) noexcept {
    auto* st = static_cast<Sink*>(user);
    if (st->file && st->r->success_status)
      return std::fwrite(data, 1, size * n, st->file) == size * n ? size * n : std::size_t{0};
    if (st->r->body.size() + size * n > kMaxBody) return std::size_t{0};
    try {
      st->r->body.append(data, size * n);
    } catch (...) {
      return std::size_t{0};
    }
    return size * n;
  });
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink_state);
  // Stop: a transfer in progress ends at the next progress tick.
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, +[](void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) noexcept {
    const auto* stop = static_cast<const std::atomic<bool>*>(user);
    return stop && stop->load(std::memory_order_relaxed) ? 1 : 0;
  });
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, opts_.stop);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  // No total timeout (a 5 GiB part takes long on a slow link): a transfer
  // slower than 1 KiB/s for stall_timeout is a dead one.
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, static_cast<long>(opts_.stall_timeout.count()));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, static_cast<long>(opts_.connect_timeout.count()));
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  if (!opts_.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, opts_.ca_file.c_str());
  if (method == "PUT") {
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &up);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(body.size()));
  } else if (method == "POST") {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  } else if (method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (method != "GET") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  }
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  CURLcode rc = curl_easy_perform(c);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  // Nothing set above (header list, buffers on this stack) stays in the handle.
  curl_easy_reset(c);
  if (rc != CURLE_OK) {
    r.status = 0;
    r.error = std::string(curl_easy_strerror(rc)) + (errbuf[0] ? std::string(": ") + errbuf : std::string());
    return r;
  }
  r.status = status;
  if (!r.ok()) {
    auto code = xml_text(r.body, "Code"), msg = xml_text(r.body, "Message");
    r.error = "HTTP " + std::to_string(r.status) + (code ? " " + *code : std::string()) +
              (msg && !msg->empty() ? ": " + *msg : std::string());
  }
  return r;
}

PutResult Client::put(const std::string& key, std::string_view data, const PutOptions& po) {
  std::vector<std::string> h;
  put_headers(h, data, po, true);
  PutResult res;
  res.response = request("PUT", key, "", data, h);
  res.etag = unquote(res.response.header("etag"));
  res.version_id = res.response.header("x-amz-version-id");
  return res;
}

PutResult Client::put_file_multipart(const std::string& key, const std::string& path, std::uint64_t part_size,
                                     const PutOptions& po, const std::string& sha256_hex_expected,
                                     std::uint64_t size_expected) {
  PutResult res;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    res.response.error = "cannot read " + path;
    return res;
  }
  std::vector<std::string> h;
  put_headers(h, {}, po, true);
  h.erase(h.begin(), h.begin() + 2);  // the create request has no payload to check
  h.emplace_back("Content-Type: application/octet-stream");
  Response created = request("POST", key, "uploads=", "", h);
  auto upload_id = created.ok() ? xml_text(created.body, "UploadId") : std::nullopt;
  if (!upload_id) {
    res.response = created;
    if (res.response.error.empty()) res.response.error = "no UploadId in the answer";
    return res;
  }
  const std::string id_q = "uploadId=" + uri_encode(*upload_id, false);
  auto abort_upload = [&](Response why) {
    request("DELETE", key, id_q, "", {});
    res.response = std::move(why);
    return res;
  };
  std::string complete = "<CompleteMultipartUpload>";
  std::string part(static_cast<std::size_t>(std::min(part_size, std::max<std::uint64_t>(size_expected, 1))), '\0');
  tls::EvpMdCtxPtr whole(EVP_MD_CTX_new());
  if (!whole || EVP_DigestInit_ex(whole.get(), EVP_sha256(), nullptr) != 1) {
    Response why;
    why.error = "sha256 init failed";
    return abort_upload(std::move(why));
  }
  std::uint64_t sent = 0;
  for (int n = 1;; ++n) {
    in.read(part.data(), static_cast<std::streamsize>(part.size()));
    if (in.bad()) {
      Response why;
      why.error = "read error on " + path;
      return abort_upload(std::move(why));
    }
    const auto got = static_cast<std::size_t>(in.gcount());
    if (got == 0 && n > 1) break;
    EVP_DigestUpdate(whole.get(), part.data(), got);
    sent += got;
    std::string_view data(part.data(), got);
    std::vector<std::string> ph;
    put_headers(ph, data, {}, false);
    Response pr = request("PUT", key, "partNumber=" + std::to_string(n) + "&" + id_q, data, ph);
    if (!pr.ok()) return abort_upload(std::move(pr));
    complete += "<Part><PartNumber>" + std::to_string(n) + "</PartNumber><ETag>" + pr.header("etag") +
                "</ETag></Part>";
    if (got < part.size()) break;
  }
  complete += "</CompleteMultipartUpload>";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_DigestFinal_ex(whole.get(), md, &md_len);
  if (sent != size_expected ||
      to_hex(std::string_view(reinterpret_cast<const char*>(md), md_len)) != sha256_hex_expected) {
    // The file changed under us: a locked object must never hold other bytes.
    Response why;
    why.error = "the parts sent (" + std::to_string(sent) + " bytes) differ from the file checked (" +
                std::to_string(size_expected) + " bytes): not completed";
    return abort_upload(std::move(why));
  }
  Response done = request("POST", key, id_q, complete, {"Content-Type: application/xml"});
  // S3 may answer 200 with an <Error> body when completion fails late.
  if (done.ok() && done.body.find("<Error>") != std::string::npos) {
    done.error = "HTTP 200 with an error: " + xml_text(done.body, "Code").value_or("?");
    done.status = 500;
  }
  if (!done.ok()) return abort_upload(std::move(done));
  res.response = done;
  res.etag = unquote(xml_text(done.body, "ETag").value_or(done.header("etag")));
  res.version_id = done.header("x-amz-version-id");
  return res;
}

Response Client::put_retention(const std::string& key, const std::string& version_id, LockMode mode,
                               std::chrono::system_clock::time_point until) {
  const std::string body = "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>" +
                           std::string(lock_mode_name(mode)) + "</Mode><RetainUntilDate>" + iso8601(until) +
                           "</RetainUntilDate></Retention>";
  return request("PUT", key, "retention=&versionId=" + uri_encode(version_id, false), body,
                 {"Content-MD5: " + md5_base64(body), "Content-Type: application/xml"});
}

std::optional<std::pair<std::string, std::string>> Client::get_retention(const std::string& key,
                                                                         const std::string& version_id,
                                                                         std::string* why) {
  why->clear();
  Response r = request("GET", key, "retention=&versionId=" + uri_encode(version_id, false), "", {});
  if (!r.ok()) {
    // AWS: NoSuchObjectLockConfiguration; Ceph RGW: ObjectLockConfigurationNotFoundError.
    if (r.status != 404 || r.body.find("NoSuchKey") != std::string::npos) *why = r.error;
    return std::nullopt;
  }
  auto mode = xml_text(r.body, "Mode"), until = xml_text(r.body, "RetainUntilDate");
  if (!mode || !until) {
    *why = "retention answer without Mode or RetainUntilDate";
    return std::nullopt;
  }
  return std::pair{*mode, *until};
}

Response Client::put_legal_hold(const std::string& key, const std::string& version_id, bool on) {
  const std::string body = std::string("<LegalHold xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>") +
                           (on ? "ON" : "OFF") + "</Status></LegalHold>";
  return request("PUT", key, "legal-hold=&versionId=" + uri_encode(version_id, false), body,
                 {"Content-MD5: " + md5_base64(body), "Content-Type: application/xml"});
}

Response Client::head(const std::string& key, const std::string& version_id) {
  return request("HEAD", key, version_id.empty() ? "" : "versionId=" + uri_encode(version_id, false), "", {});
}

Response Client::get(const std::string& key, const std::string& version_id) {
  return request("GET", key, version_id.empty() ? "" : "versionId=" + uri_encode(version_id, false), "", {});
}

Response Client::get_to_file(const std::string& key, const std::string& version_id, const std::string& path) {
  Response r;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "wb"), std::fclose);
  if (!f) {
    r.error = "cannot create " + path;
    return r;
  }
  r = request("GET", key, version_id.empty() ? "" : "versionId=" + uri_encode(version_id, false), "", {}, f.get());
  if (std::fflush(f.get()) != 0 && r.ok()) {
    r.status = 0;
    r.error = "write error on " + path;
  }
  return r;
}

std::optional<std::vector<ObjectVersion>> Client::list_versions(const std::string& prefix, std::string* why) {
  std::vector<ObjectVersion> out;
  std::string key_marker, version_marker;
  for (int page = 0; page < 100000; ++page) {
    // Parameters in SigV4's canonical (sorted) order.
    std::string q;
    if (!key_marker.empty()) q += "key-marker=" + uri_encode(key_marker, false) + "&";
    q += "prefix=" + uri_encode(prefix, false);
    if (!version_marker.empty()) q += "&version-id-marker=" + uri_encode(version_marker, false);
    q += "&versions=";
    Response r = request("GET", "", q, "", {});
    if (!r.ok()) {
      *why = r.error;
      return std::nullopt;
    }
    std::string_view body = r.body;
    for (std::size_t at = body.find("<Version>"); at != std::string_view::npos;
         at = body.find("<Version>", at + 1)) {
      auto end = body.find("</Version>", at);
      if (end == std::string_view::npos) break;
      std::string_view v = body.substr(at, end - at);
      ObjectVersion ov;
      ov.key = xml_text(v, "Key").value_or("");
      ov.version_id = xml_text(v, "VersionId").value_or("");
      ov.etag = unquote(xml_text(v, "ETag").value_or(""));
      ov.latest = xml_text(v, "IsLatest").value_or("") == "true";
      ov.size = std::strtoull(xml_text(v, "Size").value_or("0").c_str(), nullptr, 10);
      out.push_back(std::move(ov));
    }
    for (std::size_t at = body.find("<DeleteMarker>"); at != std::string_view::npos;
         at = body.find("<DeleteMarker>", at + 1)) {
      auto end = body.find("</DeleteMarker>", at);
      if (end == std::string_view::npos) break;
      std::string_view v = body.substr(at, end - at);
      ObjectVersion ov;
      ov.key = xml_text(v, "Key").value_or("");
      ov.version_id = xml_text(v, "VersionId").value_or("");
      ov.latest = xml_text(v, "IsLatest").value_or("") == "true";
      ov.delete_marker = true;
      out.push_back(std::move(ov));
    }
    if (xml_text(body, "IsTruncated").value_or("false") != "true") return out;
    key_marker = xml_text(body, "NextKeyMarker").value_or("");
    version_marker = xml_text(body, "NextVersionIdMarker").value_or("");
    if (key_marker.empty()) {
      *why = "truncated listing without NextKeyMarker";
      return std::nullopt;
    }
  }
  *why = "too many pages";
  return std::nullopt;
}

}  // namespace sightline::archive::s3
