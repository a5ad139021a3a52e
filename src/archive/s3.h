// A small S3 client for shipping sealed archive segments to object storage
// under Object Lock (AWS S3, Ceph RGW, other S3-compatible stores).
//
// libcurl does the HTTP, TLS (verification on) and the AWS Signature V4
// (CURLOPT_AWS_SIGV4). Every call blocks: it runs on a shipping thread or in
// the command line, never on an event loop. Secrets never reach an error
// text or a log line.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::archive::s3 {

// "http(s)://host[:port]/bucket[/prefix]" (path style) or, with
// virtual_host, the bucket is the host's first label:
// "https://bucket.s3.eu-west-1.amazonaws.com[/prefix]".
struct Target {
  std::string scheme;  // "http" | "https"
  std::string host;    // with ":port" when given
  std::string bucket;
  std::string prefix;  // without leading or trailing '/', may be empty
  bool virtual_host = false;
};
std::optional<Target> parse_target(std::string_view url, bool virtual_host, std::string* why);
// The URL form of a target, for logs (never has credentials in it).
std::string to_string(const Target& t);

struct Credentials {
  std::string access_key;
  std::string secret_key;
};
// From the config's values, else the file (two lines, or
// "aws_access_key_id = ..." / "aws_secret_access_key = ..." lines), else
// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. nullopt and `why` when none.
std::optional<Credentials> resolve_credentials(const std::string& access_key, const std::string& secret_key,
                                               const std::string& file, std::string* why);

struct ClientOptions {
  Target target;
  Credentials credentials;
  std::string region = "us-east-1";
  std::string ca_file;  // empty: the system's trust store
  std::chrono::seconds stall_timeout{60};  // under 1 KiB/s this long: the transfer is dead
  std::chrono::seconds connect_timeout{10};
  const std::atomic<bool>* stop = nullptr;  // set: transfers in progress abort
};

struct Response {
  long status = 0;                            // 0: no HTTP answer (see error)
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::string error;  // transport error, or the S3 error code and message
  bool success_status = false;  // the last status line was 2xx (streaming sinks)
  bool ok() const { return status >= 200 && status < 300; }
  std::string header(const std::string& name) const;
};

enum class LockMode { compliance, governance };
std::string_view lock_mode_name(LockMode m);

struct PutOptions {
  std::optional<LockMode> lock_mode;
  std::chrono::system_clock::time_point retain_until{};  // with lock_mode
  bool legal_hold = false;
  std::map<std::string, std::string> metadata;  // x-amz-meta-<name>
};

struct PutResult {
  Response response;
  std::string etag;        // without quotes
  std::string version_id;  // empty when the bucket is not versioned
};

struct ObjectVersion {
  std::string key;
  std::string version_id;
  std::uint64_t size = 0;
  std::string etag;  // without quotes
  bool latest = false;
  bool delete_marker = false;  // a delete marker, not data (hides the key from plain reads)
};

class Client {
 public:
  explicit Client(ClientOptions opts);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const Target& target() const { return opts_.target; }
  // The object key for `name` under the target's prefix.
  std::string key(std::string_view name) const;

  // One PUT of `data` with Content-MD5 and x-amz-content-sha256 (the
  // server checks both), lock headers and metadata.
  PutResult put(const std::string& key, std::string_view data, const PutOptions& po);
  // Multipart upload of a file too large for one PUT: parts of `part_size`
  // bytes, each with its MD5 and SHA-256; aborted on failure.
  // The parts' bytes must hash to `sha256_hex` and add up to `size` (the
  // file as it was checked), or the upload is aborted, never completed.
  PutResult put_file_multipart(const std::string& key, const std::string& path, std::uint64_t part_size,
                               const PutOptions& po, const std::string& sha256_hex, std::uint64_t size);
  // PutObjectRetention / GetObjectRetention on one version: some stores
  // (Ceph RGW 16) ignore lock headers on multipart uploads, so the shipper
  // reads the retention back and sets it where it is missing.
  Response put_retention(const std::string& key, const std::string& version_id, LockMode mode,
                         std::chrono::system_clock::time_point until);
  // {mode, retain-until as the store wrote it}; nullopt with `why` empty when the version has none.
  std::optional<std::pair<std::string, std::string>> get_retention(const std::string& key,
                                                                   const std::string& version_id, std::string* why);
  Response put_legal_hold(const std::string& key, const std::string& version_id, bool on);
  Response head(const std::string& key, const std::string& version_id = {});
  Response get(const std::string& key, const std::string& version_id = {});
  // GET into a file (created or truncated), streamed: segments can be large.
  Response get_to_file(const std::string& key, const std::string& version_id, const std::string& path);
  // Every version of every key under `prefix` (ListObjectVersions, paged).
  std::optional<std::vector<ObjectVersion>> list_versions(const std::string& prefix, std::string* why);

 private:
  Response request(const std::string& method, const std::string& key, const std::string& query,
                   std::string_view body, const std::vector<std::string>& headers, std::FILE* sink = nullptr);

  struct Curl;
  ClientOptions opts_;
  std::unique_ptr<Curl> curl_;
};

// x-amz-object-lock-retain-until-date's form: "2026-11-27T10:00:00Z".
std::string iso8601(std::chrono::system_clock::time_point t);

}  // namespace sightline::archive::s3
