#include "core/text_file.h"
#include "identity/credentials.h"
#include "identity/directory.h"
#include "identity/passwd.h"
#include "identity/store.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

using namespace sightline::identity;
namespace fs = std::filesystem;

namespace {

// PBKDF2 at its default cost is the faster of the two for tests.
std::string make_hash(const std::string& password) { return hash_password(password, HashScheme::pbkdf2_sha256); }

std::string error_of(std::string_view text) {
  FileError err;
  auto c = Credentials::parse(text, "creds", err);
  CHECK_FALSE(c);
  return err.message;
}

fs::path temp_dir() {
  auto dir = fs::temp_directory_path() / ("sightline-identity-test-" + std::to_string(getpid()));
  fs::create_directories(dir);
  return dir;
}

}  // namespace

TEST_CASE("password hashes verify the right password only") {
  for (auto scheme : {HashScheme::scrypt, HashScheme::pbkdf2_sha256}) {
    std::string text = hash_password("correct horse", scheme);
    REQUIRE_FALSE(text.empty());
    std::string why;
    auto h = PasswordHash::parse(text, why);
    INFO(why);
    REQUIRE(h);
    CHECK(h->verify("correct horse"));
    CHECK_FALSE(h->verify("correct hors"));
    CHECK_FALSE(h->verify(""));
    // A fresh salt each time.
    CHECK(hash_password("correct horse", scheme) != text);
  }
  CHECK(hash_password("x").starts_with("$scrypt$ln=15,r=8,p=1$"));
  CHECK(hash_password("x", HashScheme::pbkdf2_sha256).starts_with("$pbkdf2-sha256$i=600000$"));
  CHECK_FALSE(PasswordHash::dummy().verify(""));
}

TEST_CASE("PBKDF2 matches a known vector") {
  // Made independently with Python:
  // base64(hashlib.pbkdf2_hmac('sha256', b'password', b'saltsalt', 10000, 32))
  std::string why;
  auto h = PasswordHash::parse("$pbkdf2-sha256$i=10000$c2FsdHNhbHQ=$"
                               "8AsC4H/147lFlEEMCnL1JMziEIWaSGvXLB7jM4MIJaM=", why);
  INFO(why);
  REQUIRE(h);
  CHECK(h->verify("password"));
  CHECK_FALSE(h->verify("Password"));
}

TEST_CASE("credentials file: users, comments, case-insensitive names") {
  std::string text = "# proxy users\n\nalice:" + make_hash("a-pass") + "  # the first\r\nBob:" + make_hash("b-pass") + "\n";
  FileError err;
  auto c = Credentials::parse(text, "creds", err);
  INFO(err.message);
  REQUIRE(c);
  CHECK(c->size() == 2);
  const auto* alice = c->find("alice");
  REQUIRE(alice);
  CHECK(alice->hash.verify("a-pass"));
  CHECK_FALSE(alice->hash.verify("b-pass"));
  const auto* bob = c->find("BOB");
  REQUIRE(bob);
  CHECK(bob->user == "Bob");
  CHECK(bob->hash.verify("b-pass"));
  CHECK(c->find("carol") == nullptr);
}

TEST_CASE("credentials file: malformed lines name file and line, never the hash") {
  std::string good = make_hash("x");
  CHECK(error_of("alice:" + good + "\nbob\n") == "creds:2: expected user:$scheme$params$salt$hash");
  CHECK(error_of(":" + good) == "creds:1: expected user:$scheme$params$salt$hash");
  CHECK(error_of("a b:" + good) == "creds:1: expected user:$scheme$params$salt$hash");
  CHECK(error_of("alice:$md5$x$y$z") ==
        "creds:1: user \"alice\": unknown hash scheme (expected scrypt or pbkdf2-sha256)");
  CHECK(error_of("alice:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ=$GRmvShJyDwQ0xlxkIWxTSwsqvvHj2XUOYrqehWxJ3LQ=") ==
        "creds:1: user \"alice\": pbkdf2-sha256 needs i=10000..10000000");
  CHECK(error_of("alice:$scrypt$ln=30,r=8,p=1$c2FsdHNhbHQ=$GRmvShJyDwQ0xlxkIWxTSwsqvvHj2XUOYrqehWxJ3LQ=") ==
        "creds:1: user \"alice\": scrypt parameters must be ln=10..24, r=1..32, p=1..16, at most 256 MiB");
  CHECK(error_of("alice:$pbkdf2-sha256$i=10000$!!!!$GRmvShJyDwQ0xlxkIWxTSwsqvvHj2XUOYrqehWxJ3LQ=") ==
        "creds:1: user \"alice\": salt must be base64 of 8 to 64 bytes");
  CHECK(error_of("alice:$pbkdf2-sha256$i=10000$c2FsdHNhbHQ=$c2hvcnQ=") ==
        "creds:1: user \"alice\": hash must be base64 of 16 to 64 bytes");
  CHECK(error_of("alice:" + good + "\nALICE:" + good) == "creds:2: user \"ALICE\" appears twice");
  std::string msg = error_of("alice:" + good.substr(0, good.size() - 4) + "%%%%");
  CHECK(msg.find(good.substr(good.rfind('$') + 1, 8)) == std::string::npos);
}

TEST_CASE("Proxy-Authorization Basic values") {
  auto b = parse_basic("Basic YWxpY2U6cyNjcjp0");  // alice:s#cr:t
  REQUIRE(b);
  CHECK(b->user == "alice");
  CHECK(b->password == "s#cr:t");
  CHECK(parse_basic("basic  YWxpY2U6cyNjcjp0"));
  CHECK_FALSE(parse_basic("Bearer YWxpY2U6cyNjcjp0"));
  CHECK_FALSE(parse_basic("Basic"));
  CHECK_FALSE(parse_basic("Basic YWxpY2U"));        // not a multiple of 4
  CHECK_FALSE(parse_basic("Basic YWxpY2U=x=="));    // padding inside
  CHECK_FALSE(parse_basic("Basic YWxpY2U="));        // "alice": no colon
  CHECK_FALSE(parse_basic("Basic OnBhc3M="));        // ":pass": no user
  auto empty_pw = parse_basic("Basic YWxpY2U6");     // "alice:"
  REQUIRE(empty_pw);
  CHECK(empty_pw->password.empty());
}

TEST_CASE("user map: the longest prefix wins, IPv4 and IPv6") {
  FileError err;
  auto m = UserMap::parse("10.0.0.0/8 staff\n10.1.2.0/24 trading   # desk\n10.1.2.3 alice\n"
                          "2001:db8::/32 v6net\n2001:db8:1::/48 v6desk\n::1 local6\n",
                          "map", err);
  INFO(err.message);
  REQUIRE(m);
  CHECK(m->size() == 6);
  auto who = [&](const char* ip) { return std::string(m->lookup(*sightline::policy::IpAddress::parse(ip))); };
  CHECK(who("10.1.2.3") == "alice");
  CHECK(who("10.1.2.4") == "trading");
  CHECK(who("10.9.9.9") == "staff");
  CHECK(who("::ffff:10.1.2.3") == "alice");  // IPv4-mapped
  CHECK(who("192.0.2.1").empty());
  CHECK(who("2001:db8:1::5") == "v6desk");
  CHECK(who("2001:db8:2::5") == "v6net");
  CHECK(who("::1") == "local6");
  CHECK(who("2001:db9::1").empty());
}

TEST_CASE("user map: errors name file and line") {
  FileError err;
  CHECK_FALSE(UserMap::parse("10.0.0.0/8 staff\n10.0.0.0/33 x\n", "map", err));
  CHECK(err.message.starts_with("map:2: \"10.0.0.0/33\": "));
  CHECK_FALSE(UserMap::parse("10.0.0.0/8\n", "map", err));
  CHECK(err.message == "map:1: expected \"CIDR user\" (one user name, no spaces)");
  CHECK_FALSE(UserMap::parse("10.0.0.0/8 two users\n", "map", err));
  CHECK(err.message == "map:1: expected \"CIDR user\" (one user name, no spaces)");
  CHECK_FALSE(UserMap::parse("10.0.0.0/8 a\n# c\n10.0.0.0/8 b\n", "map", err));
  CHECK(err.message == "map:3: \"10.0.0.0/8\" is mapped twice");
}

TEST_CASE("groups file") {
  FileError err;
  auto g = Groups::parse("supervised: alice, Bob\ntraders: alice,\n# more\nsupervised: carol\n", "groups", err);
  INFO(err.message);
  REQUIRE(g);
  CHECK(g->group_count() == 2);
  CHECK(g->of("alice") == std::vector<std::string>{"supervised", "traders"});
  CHECK(g->of("ALICE") == std::vector<std::string>{"supervised", "traders"});
  CHECK(g->of("bob") == std::vector<std::string>{"supervised"});
  CHECK(g->of("carol") == std::vector<std::string>{"supervised"});
  CHECK(g->of("dave").empty());
  CHECK_FALSE(Groups::parse("ok: a\nno colon here\n", "groups", err));
  CHECK(err.message == "groups:2: expected \"group: user1, user2\"");
  CHECK_FALSE(Groups::parse("g: a b\n", "groups", err));
  CHECK(err.message == "groups:1: invalid user name \"a b\" in group g");
}

TEST_CASE("auth cache: outcomes expire, keys depend on the stored hash") {
  AuthCache cache(std::chrono::minutes(5), 3);
  auto now = AuthCache::Clock::now();
  auto k1 = AuthCache::key("alice", "pw", "$h1");
  CHECK(k1 != AuthCache::key("alice", "pw", "$h2"));
  CHECK(k1 == AuthCache::key("ALICE", "pw", "$h1"));
  CHECK(AuthCache::key("a", "bpw", "") != AuthCache::key("ab", "pw", ""));
  CHECK(cache.find(k1, now) == AuthCache::Result::unknown);
  cache.put(k1, true, now);
  CHECK(cache.find(k1, now + std::chrono::minutes(4)) == AuthCache::Result::ok);
  CHECK(cache.find(k1, now + std::chrono::minutes(6)) == AuthCache::Result::unknown);
  auto k2 = AuthCache::key("bob", "wrong", "$h");
  cache.put(k2, false, now);
  CHECK(cache.find(k2, now + std::chrono::seconds(30)) == AuthCache::Result::invalid);
  CHECK(cache.find(k2, now + std::chrono::seconds(61)) == AuthCache::Result::unknown);
  for (int i = 0; i < 10; ++i) cache.put(AuthCache::key("u" + std::to_string(i), "p", ""), true, now);
  CHECK(cache.size() <= 3);
}

TEST_CASE("identity store: a bad file on reload keeps the previous one") {
  auto dir = temp_dir();
  auto creds = (dir / "creds").string(), map = (dir / "map").string(), groups = (dir / "groups").string();
  std::ofstream(creds) << "alice:" << make_hash("pw") << "\n";
  std::ofstream(map) << "127.0.0.1 alice\n";
  std::ofstream(groups) << "g: alice\n";
  IdentityStore store({creds, map, groups}, "sightline", std::chrono::minutes(5));
  std::vector<std::string> errors;
  REQUIRE(store.reload(errors));
  auto first = store.current();
  CHECK(first->credentials->size() == 1);
  CHECK(first->groups_of("alice") == std::vector<std::string>{"g"});

  std::ofstream(map) << "not-an-address alice\n";
  std::ofstream(groups) << "g: alice, bob\n";
  CHECK_FALSE(store.reload(errors));
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].starts_with(map + ":1: "));
  auto second = store.current();
  CHECK(second->user_map == first->user_map);  // kept
  CHECK(second->groups_of("bob") == std::vector<std::string>{"g"});  // reloaded
  fs::remove_all(dir);
}

TEST_CASE("passwd: adds and replaces a line atomically, mode 0600") {
  auto dir = temp_dir();
  auto path = (dir / "users").string();
  std::string why;
  REQUIRE(set_password_line(path, "alice", make_hash("one"), why));
  {
    std::ofstream(path, std::ios::app) << "# keep me\nbob:" << make_hash("bob") << "\n";
  }
  REQUIRE(set_password_line(path, "Alice", make_hash("two"), why));
  REQUIRE(set_password_line(path, "carol", make_hash("three"), why));
  struct stat st{};
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  FileError err;
  auto c = Credentials::load(path, err);
  INFO(err.message);
  REQUIRE(c);
  CHECK(c->size() == 3);
  CHECK(c->find("alice")->user == "Alice");
  CHECK(c->find("alice")->hash.verify("two"));
  CHECK(c->find("bob")->hash.verify("bob"));
  CHECK(c->find("carol")->hash.verify("three"));
  std::string text, w;
  REQUIRE(sightline::core::read_whole_file(path, text, w));
  CHECK(text.find("# keep me\n") != std::string::npos);
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);  // no temp file left
  fs::remove_all(dir);
}
