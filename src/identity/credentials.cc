#include "identity/credentials.h"

#include "core/text_file.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <charconv>

namespace sightline::identity {
namespace {

// Defaults for new entries. scrypt ln=15, r=8, p=1 (32 MiB, tens of ms) is
// OWASP's recommended minimum; PBKDF2 600,000 iterations likewise.
constexpr unsigned kScryptLog2N = 15, kScryptR = 8, kScryptP = 1;
constexpr std::uint32_t kPbkdf2Iterations = 600'000;
constexpr std::size_t kSaltBytes = 16, kHashBytes = 32;
// Bounds on what a file may ask for, so one entry cannot pin a thread or
// memory for long: scrypt at most 256 MiB, PBKDF2 at most 10 M iterations.
constexpr std::uint64_t kScryptMaxMemory = 256ull << 20;
constexpr std::uint32_t kPbkdf2MinIterations = 10'000, kPbkdf2MaxIterations = 10'000'000;

std::string base64_encode(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(data.data()), static_cast<int>(data.size()));
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return out;
}

// Strict standard base64 with padding; nullopt on anything else.
std::optional<std::string> base64_decode(std::string_view text) {
  if (text.empty() || text.size() % 4 != 0 || text.size() > 4096) return std::nullopt;
  std::size_t pad = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (c == '=') {
      if (i + 2 < text.size()) return std::nullopt;
      ++pad;
    } else if ((!alnum && c != '+' && c != '/') || pad != 0) {
      return std::nullopt;
    }
  }
  std::string out(text.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0 || static_cast<std::size_t>(n) < pad) return std::nullopt;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

bool parse_uint(std::string_view s, std::uint64_t& out) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && end == s.data() + s.size();
}

// "k1=v1,k2=v2" → each value through `set(key, value)`.
template <typename Set>
bool parse_params(std::string_view text, Set&& set) {
  while (!text.empty()) {
    auto comma = text.find(',');
    std::string_view kv = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    auto eq = kv.find('=');
    std::uint64_t v = 0;
    if (eq == std::string_view::npos || !parse_uint(kv.substr(eq + 1), v) || !set(kv.substr(0, eq), v))
      return false;
  }
  return true;
}

bool derive(const PasswordHash& h, std::string_view password, unsigned char* out, std::size_t len) {
  if (h.scheme == PasswordHash::Scheme::scrypt) {
    std::uint64_t n = 1ull << h.log2_n;
    std::uint64_t maxmem = 128ull * h.r * (n + h.p + 2) + (1u << 20);
    return EVP_PBE_scrypt(password.data(), password.size(),
                          reinterpret_cast<const unsigned char*>(h.salt.data()), h.salt.size(), n, h.r, h.p,
                          maxmem, out, len) == 1;
  }
  return PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                           reinterpret_cast<const unsigned char*>(h.salt.data()), static_cast<int>(h.salt.size()),
                           static_cast<int>(h.iterations), EVP_sha256(), static_cast<int>(len), out) == 1;
}

}  // namespace

std::optional<PasswordHash> PasswordHash::parse(std::string_view text, std::string& why) {
  // "$scheme$params$salt$hash"
  std::vector<std::string_view> parts;
  std::string_view rest = text;
  if (rest.empty() || rest.front() != '$') {
    why = "expected $scheme$params$salt$hash";
    return std::nullopt;
  }
  rest.remove_prefix(1);
  while (true) {
    auto d = rest.find('$');
    parts.push_back(rest.substr(0, d));
    if (d == std::string_view::npos) break;
    rest.remove_prefix(d + 1);
  }
  if (parts.size() != 4) {
    why = "expected $scheme$params$salt$hash";
    return std::nullopt;
  }
  PasswordHash h;
  h.text = std::string(text);
  if (parts[0] == "scrypt") {
    h.scheme = Scheme::scrypt;
    bool ok = parse_params(parts[1], [&](std::string_view k, std::uint64_t v) {
      if (k == "ln" && v >= 10 && v <= 24) h.log2_n = static_cast<unsigned>(v);
      else if (k == "r" && v >= 1 && v <= 32) h.r = static_cast<unsigned>(v);
      else if (k == "p" && v >= 1 && v <= 16) h.p = static_cast<unsigned>(v);
      else return false;
      return true;
    });
    if (!ok || 128ull * h.r * (1ull << h.log2_n) > kScryptMaxMemory) {
      why = "scrypt parameters must be ln=10..24, r=1..32, p=1..16, at most 256 MiB";
      return std::nullopt;
    }
  } else if (parts[0] == "pbkdf2-sha256") {
    h.scheme = Scheme::pbkdf2_sha256;
    bool ok = parse_params(parts[1], [&](std::string_view k, std::uint64_t v) {
      if (k != "i" || v < kPbkdf2MinIterations || v > kPbkdf2MaxIterations) return false;
      h.iterations = static_cast<std::uint32_t>(v);
      return true;
    });
    if (!ok || h.iterations == 0) {
      why = "pbkdf2-sha256 needs i=" + std::to_string(kPbkdf2MinIterations) + ".." +
            std::to_string(kPbkdf2MaxIterations);
      return std::nullopt;
    }
  } else {
    why = "unknown hash scheme (expected scrypt or pbkdf2-sha256)";
    return std::nullopt;
  }
  auto salt = base64_decode(parts[2]);
  auto hash = base64_decode(parts[3]);
  if (!salt || salt->size() < 8 || salt->size() > 64) {
    why = "salt must be base64 of 8 to 64 bytes";
    return std::nullopt;
  }
  if (!hash || hash->size() < 16 || hash->size() > 64) {
    why = "hash must be base64 of 16 to 64 bytes";
    return std::nullopt;
  }
  h.salt = std::move(*salt);
  h.hash = std::move(*hash);
  return h;
}

bool PasswordHash::verify(std::string_view password) const {
  unsigned char out[64];
  bool ok = derive(*this, password, out, hash.size()) && CRYPTO_memcmp(out, hash.data(), hash.size()) == 0;
  OPENSSL_cleanse(out, sizeof out);
  return ok;
}

const PasswordHash& PasswordHash::dummy() {
  static const PasswordHash h = [] {
    PasswordHash d;
    d.log2_n = kScryptLog2N;
    d.r = kScryptR;
    d.p = kScryptP;
    d.salt.assign(kSaltBytes, '\0');
    d.hash.assign(kHashBytes, '\0');
    return d;
  }();
  return h;
}

std::string hash_password(std::string_view password, HashScheme scheme) {
  PasswordHash h;
  unsigned char salt[kSaltBytes];
  if (RAND_bytes(salt, sizeof salt) != 1) return {};
  h.salt.assign(reinterpret_cast<const char*>(salt), sizeof salt);
  std::string params;
  if (scheme == HashScheme::scrypt) {
    h.scheme = PasswordHash::Scheme::scrypt;
    h.log2_n = kScryptLog2N;
    h.r = kScryptR;
    h.p = kScryptP;
    params = "$scrypt$ln=" + std::to_string(h.log2_n) + ",r=" + std::to_string(h.r) + ",p=" + std::to_string(h.p);
  } else {
    h.scheme = PasswordHash::Scheme::pbkdf2_sha256;
    h.iterations = kPbkdf2Iterations;
    params = "$pbkdf2-sha256$i=" + std::to_string(h.iterations);
  }
  unsigned char out[kHashBytes];
  if (!derive(h, password, out, sizeof out)) return {};
  std::string text = params + "$" + base64_encode(h.salt) + "$" +
                     base64_encode(std::string_view(reinterpret_cast<const char*>(out), sizeof out));
  OPENSSL_cleanse(out, sizeof out);
  return text;
}

bool valid_user_name(std::string_view name) {
  if (name.empty() || name.size() > 256) return false;
  for (char c : name)
    if (c <= ' ' || c >= 127 || c == ':' || c == ',' || c == '#') return false;
  return true;
}

std::string fold_case(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::shared_ptr<const Credentials> Credentials::load(const std::string& path, FileError& err) {
  std::string text, why;
  if (!core::read_whole_file(path, text, why)) {
    err.message = path + ": " + why;
    return nullptr;
  }
  auto creds = parse(text, path, err);
  OPENSSL_cleanse(text.data(), text.size());
  return creds;
}

std::shared_ptr<const Credentials> Credentials::parse(std::string_view text, const std::string& name,
                                                      FileError& err) {
  auto creds = std::make_shared<Credentials>();
  bool ok = core::for_each_line(text, [&](std::size_t lineno, std::string_view line) {
    auto where = name + ":" + std::to_string(lineno) + ": ";
    auto colon = line.find(':');
    std::string_view user = line.substr(0, colon);
    if (colon == std::string_view::npos || !valid_user_name(user)) {
      err.message = where + "expected user:$scheme$params$salt$hash";
      return false;
    }
    std::string why;
    auto hash = PasswordHash::parse(line.substr(colon + 1), why);
    if (!hash) {
      err.message = where + "user \"" + std::string(user) + "\": " + why;
      return false;
    }
    if (!creds->entries_.emplace(fold_case(user), Entry{std::string(user), std::move(*hash)}).second) {
      err.message = where + "user \"" + std::string(user) + "\" appears twice";
      return false;
    }
    return true;
  });
  if (!ok) return nullptr;
  return creds;
}

const Credentials::Entry* Credentials::find(std::string_view user) const {
  auto it = entries_.find(fold_case(user));
  return it == entries_.end() ? nullptr : &it->second;
}

BasicCredentials::~BasicCredentials() { OPENSSL_cleanse(password.data(), password.size()); }

std::optional<BasicCredentials> parse_basic(std::string_view value) {
  constexpr std::string_view kBasic = "basic";
  if (value.size() <= kBasic.size() || fold_case(value.substr(0, kBasic.size())) != kBasic ||
      (value[kBasic.size()] != ' ' && value[kBasic.size()] != '\t'))
    return std::nullopt;
  value.remove_prefix(kBasic.size());
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  auto decoded = base64_decode(value);
  if (!decoded) return std::nullopt;
  std::optional<BasicCredentials> out;
  auto colon = decoded->find(':');
  if (colon != std::string::npos && colon > 0) {
    out.emplace();
    out->user = decoded->substr(0, colon);
    out->password = decoded->substr(colon + 1);
  }
  OPENSSL_cleanse(decoded->data(), decoded->size());
  return out;
}

}  // namespace sightline::identity
