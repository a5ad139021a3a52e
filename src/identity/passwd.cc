#include "identity/passwd.h"

#include "core/text_file.h"

#include <openssl/crypto.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string_view>

namespace sightline::identity {
namespace {

// Wipes the password however the command ends.
struct Secret {
  std::string text;
  ~Secret() { OPENSSL_cleanse(text.data(), text.size()); }
};

bool read_line(std::istream& in, Secret& out) {
  if (!std::getline(in, out.text)) return false;
  if (!out.text.empty() && out.text.back() == '\r') out.text.pop_back();
  return true;
}

// Prompts on stderr and reads a line from the terminal with echo off.
bool prompt_no_echo(const char* prompt, Secret& out) {
  std::cerr << prompt << std::flush;
  termios saved{};
  bool restore = tcgetattr(STDIN_FILENO, &saved) == 0;
  if (restore) {
    termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
  }
  bool ok = read_line(std::cin, out);
  if (restore) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
  std::cerr << "\n";
  return ok;
}

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace

bool set_password_line(const std::string& path, const std::string& user, const std::string& hash_text,
                       std::string& why) {
  std::string text;
  if (std::filesystem::exists(path) && !core::read_whole_file(path, text, why)) {
    why = path + ": " + why;
    return false;
  }
  // Keep every line as it is except USER's own.
  std::string out;
  bool replaced = false;
  std::string_view rest = text;
  std::string folded = fold_case(user);
  while (!rest.empty()) {
    auto eol = rest.find('\n');
    std::string_view line = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 1);
    std::string_view trimmed = line;
    while (!trimmed.empty() && (trimmed.front() == ' ' || trimmed.front() == '\t')) trimmed.remove_prefix(1);
    auto colon = trimmed.find(':');
    if (colon != std::string_view::npos && fold_case(trimmed.substr(0, colon)) == folded) {
      if (replaced) continue;  // a duplicate would make the file invalid
      out += user + ":" + hash_text + "\n";
      replaced = true;
      continue;
    }
    out.append(line).append("\n");
  }
  if (!replaced) out += user + ":" + hash_text + "\n";

  std::filesystem::path p(path);
  std::string tmpl = (p.parent_path().empty() ? std::filesystem::path(".") : p.parent_path()).string() + "/." +
                     p.filename().string() + ".XXXXXX";
  int fd = mkstemp(tmpl.data());  // mode 0600
  if (fd < 0) {
    why = tmpl + ": " + std::strerror(errno);
    return false;
  }
  bool ok = fchmod(fd, 0600) == 0 && write_all(fd, out) && fsync(fd) == 0;
  int saved_errno = errno;
  ok = ::close(fd) == 0 && ok;
  OPENSSL_cleanse(out.data(), out.size());
  OPENSSL_cleanse(text.data(), text.size());
  if (!ok || std::rename(tmpl.c_str(), path.c_str()) != 0) {
    why = path + ": " + std::strerror(ok ? errno : saved_errno);
    ::unlink(tmpl.c_str());
    return false;
  }
  return true;
}

int passwd_command(const std::string& path, const std::string& user, bool password_stdin,
                   const std::string& scheme) {
  if (!valid_user_name(user)) {
    std::cerr << "sightline: invalid user name \"" << user
              << "\" (printable ASCII without spaces, ':', ',' or '#')\n";
    return 2;
  }
  Secret password;
  if (password_stdin || !isatty(STDIN_FILENO)) {
    if (!read_line(std::cin, password)) {
      std::cerr << "sightline: no password on stdin\n";
      return 2;
    }
  } else {
    Secret again;
    if (!prompt_no_echo("Password: ", password) || !prompt_no_echo("Again: ", again)) return 2;
    if (password.text != again.text) {
      std::cerr << "sightline: the passwords differ\n";
      return 2;
    }
  }
  if (password.text.empty()) {
    std::cerr << "sightline: empty password\n";
    return 2;
  }
  std::string hash = hash_password(password.text, scheme == "pbkdf2-sha256" ? HashScheme::pbkdf2_sha256
                                                                            : HashScheme::scrypt);
  std::string why;
  if (hash.empty()) {
    std::cerr << "sightline: hashing failed\n";
    return 2;
  }
  if (!set_password_line(path, user, hash, why)) {
    std::cerr << "sightline: " << why << "\n";
    return 2;
  }
  std::cout << "set the password of " << user << " in " << path << "\n";
  return 0;
}

}  // namespace sightline::identity
