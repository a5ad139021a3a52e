// Who may use the explicit proxy (issue 9): a credentials file of salted,
// deliberately slow password hashes, one line per user:
//   alice:$scrypt$ln=15,r=8,p=1$<salt base64>$<hash base64>
//   bob:$pbkdf2-sha256$i=600000$<salt base64>$<hash base64>
// `#` starts a comment. scrypt is the default for new entries (memory-hard:
// 32 MiB per check at ln=15, r=8); PBKDF2-HMAC-SHA256 is accepted for
// files made by other tools. docs/identity.md has the details.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sightline::identity {

// "file:line: reason" for the first bad line.
struct FileError {
  std::string message;
};

// One user's stored hash, parsed.
struct PasswordHash {
  enum class Scheme { scrypt, pbkdf2_sha256 } scheme = Scheme::scrypt;
  unsigned log2_n = 15, r = 8, p = 1;  // scrypt
  std::uint32_t iterations = 0;        // PBKDF2
  std::string salt;
  std::string hash;
  std::string text;  // as written ("$scrypt$..."), for cache keys; never logged

  // nullopt with `why` set; `why` never quotes the hash.
  static std::optional<PasswordHash> parse(std::string_view text, std::string& why);
  // Recomputes and compares in constant time. Slow by design: not for an
  // event-loop thread.
  bool verify(std::string_view password) const;
  // A hash no password matches, with the default cost: checked for unknown
  // users so that the answer's timing does not tell which names exist.
  static const PasswordHash& dummy();
};

enum class HashScheme { scrypt, pbkdf2_sha256 };
// A new "$scheme$params$salt$hash" for `password` with a random salt and the
// default (strong) parameters; empty when the random source or KDF fails.
std::string hash_password(std::string_view password, HashScheme scheme = HashScheme::scrypt);

// A user name as the files accept it: printable ASCII without spaces, ':',
// ',' or '#', at most 256 bytes.
bool valid_user_name(std::string_view name);
// ASCII lower case: user and group names compare case-insensitively, as
// policy rules do.
std::string fold_case(std::string_view s);

class Credentials {
 public:
  struct Entry {
    std::string user;  // as written in the file
    PasswordHash hash;
  };

  static std::shared_ptr<const Credentials> load(const std::string& path, FileError& err);
  static std::shared_ptr<const Credentials> parse(std::string_view text, const std::string& name,
                                                  FileError& err);

  // Null for an unknown user (any case of the name).
  const Entry* find(std::string_view user) const;
  std::size_t size() const { return entries_.size(); }

 private:
  std::unordered_map<std::string, Entry> entries_;  // by fold_case(user)
};

// The user and password of a `Proxy-Authorization: Basic ...` value;
// nullopt when it is not Basic or not valid base64 "user:password".
struct BasicCredentials {
  std::string user;
  std::string password;
  ~BasicCredentials();  // wipes the password
};
std::optional<BasicCredentials> parse_basic(std::string_view header_value);

}  // namespace sightline::identity
