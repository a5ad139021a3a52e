#include "archive/bucket.h"

#include "archive/format.h"

#include <algorithm>
#include <filesystem>

namespace sightline::archive {

std::map<std::string, std::vector<const BucketObject*>> BucketListing::by_node() const {
  std::map<std::string, std::vector<const BucketObject*>> out;
  for (const auto& [key, o] : objects) out[o.node].push_back(&o);
  return out;
}

std::optional<BucketListing> list_bucket(s3::Client& client, std::string* error) {
  const std::string prefix = client.target().prefix.empty() ? "" : client.target().prefix + "/";
  auto versions = client.list_versions(prefix, error);
  if (!versions) return std::nullopt;
  BucketListing out;
  out.versions = versions->size();
  auto digits = [](std::string_view d, std::size_t n) {
    return d.size() == n && std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  for (auto& v : *versions) {
    std::string_view rest(v.key);
    rest.remove_prefix(std::min(prefix.size(), rest.size()));
    std::vector<std::string_view> parts;
    for (std::size_t at = 0;;) {
      auto slash = rest.find('/', at);
      parts.push_back(rest.substr(at, slash == std::string_view::npos ? std::string_view::npos : slash - at));
      if (slash == std::string_view::npos) break;
      at = slash + 1;
    }
    // Names become paths under a work directory: nothing that could leave it.
    if (parts.size() != 5 || !valid_writer_id(parts[0]) || parts[0] == "." || parts[0] == ".." ||
        !digits(parts[1], 4) || !digits(parts[2], 2) || !digits(parts[3], 2) || parts[4].empty() ||
        parts[4].front() == '.') {
      out.findings.push_back({FindingKind::inserted, v.key, std::nullopt, std::nullopt, {},
                              "object outside the archive's key layout"});
      continue;
    }
    if (v.delete_marker) {
      // Object Lock allows a delete marker over a locked version: plain
      // readers then get 404 although the version is still there.
      out.findings.push_back({FindingKind::deleted, std::string(parts[0]) + "/" + std::string(parts[4]),
                              std::nullopt, std::nullopt, {},
                              "a delete marker (version " + v.version_id + ") hides " + v.key});
      continue;
    }
    BucketObject& o = out.objects[v.key];
    o.node = std::string(parts[0]);
    o.file = std::string(parts[4]);
    o.key = v.key;
    o.versions.push_back(std::move(v));
  }
  return out;
}

std::optional<std::string> download_first(s3::Client& client, const BucketObject& o, const std::string& dir) {
  auto r = client.get_to_file(o.key, o.first().version_id, (std::filesystem::path(dir) / o.file).string());
  if (!r.ok()) return "GET " + o.key + " version " + o.first().version_id + ": " + r.error;
  return std::nullopt;
}

std::optional<s3::ClientOptions> client_for_s3_url(const std::string& url, const std::string& endpoint_in,
                                                   const std::string& region, const std::string& credentials_file,
                                                   const std::string& ca_file, bool virtual_host, std::string* why) {
  if (url.rfind("s3://", 0) != 0) {
    *why = "expected s3://bucket[/prefix]";
    return std::nullopt;
  }
  const std::string rest = url.substr(5);
  const auto slash = rest.find('/');
  const std::string bucket = rest.substr(0, slash), prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  std::string endpoint = endpoint_in.empty() ? "https://s3." + region + ".amazonaws.com" : endpoint_in;
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  const auto scheme_end = endpoint.find("://");
  if (scheme_end == std::string::npos) {
    *why = "--endpoint: expected http(s)://host[:port]";
    return std::nullopt;
  }
  const std::string full = virtual_host ? endpoint.substr(0, scheme_end + 3) + bucket + "." +
                                              endpoint.substr(scheme_end + 3) + "/" + prefix
                                        : endpoint + "/" + bucket + "/" + prefix;
  auto target = s3::parse_target(full, virtual_host, why);
  if (!target) return std::nullopt;
  auto creds = s3::resolve_credentials("", "", credentials_file, why);
  if (!creds) return std::nullopt;
  s3::ClientOptions co;
  co.target = *target;
  co.credentials = *creds;
  co.region = region;
  co.ca_file = ca_file;
  return co;
}

}  // namespace sightline::archive
