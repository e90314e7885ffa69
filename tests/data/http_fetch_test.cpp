// `lockstep data fetch` over real HTTP: a loopback server in this process (plain sockets, one thread)
// serves generated files, a 404, a transfer cut short of its Content-Length, and one cut short with
// no length at all; a closed port gives connection refused. No python, no network beyond 127.0.0.1.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "data/cli.h"
#include "data/convert.h"
#include "data/fetch.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A minimal HTTP/1.1 server on 127.0.0.1:<free port>, one connection at a time, Connection: close.
class LoopbackServer {
 public:
  enum class Mode { Ok, CutWithLength, CutWithoutLength };
  LoopbackServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 16) != 0)
      throw std::runtime_error("loopback server: bind/listen failed");
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~LoopbackServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/"; }
  void serve(const std::string& path, std::string body, Mode mode = Mode::Ok) {
    std::lock_guard<std::mutex> lock(mu_);
    routes_[path] = {std::move(body), mode};
  }
  int requests(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    return hits_[path];
  }

 private:
  struct Route {
    std::string body;
    Mode mode = Mode::Ok;
  };
  void loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      handle(c);
      ::close(c);
    }
  }
  static void send_all(int c, const char* data, size_t n) {
    while (n > 0) {
      ssize_t k = ::send(c, data, n, MSG_NOSIGNAL);
      if (k <= 0) return;
      data += k;
      n -= static_cast<size_t>(k);
    }
  }
  void handle(int c) {
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos) {
      ssize_t k = ::recv(c, buf, sizeof buf, 0);
      if (k <= 0) return;
      req.append(buf, static_cast<size_t>(k));
    }
    std::istringstream line(req.substr(0, req.find("\r\n")));
    std::string method, target;
    line >> method >> target;
    Route r;
    bool found = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      hits_[target]++;
      auto it = routes_.find(target);
      if (it != routes_.end()) r = it->second, found = true;
    }
    std::string head;
    if (!found) {
      const std::string body = "not found\n";
      head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\nConnection: close\r\n\r\n" + body;
      send_all(c, head.data(), head.size());
      return;
    }
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n";
    if (r.mode != Mode::CutWithoutLength) head += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
    head += "\r\n";
    send_all(c, head.data(), head.size());
    if (method == "HEAD") return;
    const size_t n = r.mode == Mode::Ok ? r.body.size() : r.body.size() / 2;  // the cut modes stop halfway
    send_all(c, r.body.data(), n);
  }

  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::map<std::string, Route> routes_;
  std::map<std::string, int> hits_;
};

// Keep proxies configured in the environment away from 127.0.0.1 for the duration of a test.
class NoProxy {
 public:
  NoProxy() {
    for (const char* v : {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"}) {
      if (const char* s = std::getenv(v)) saved_[v] = s;
      unsetenv(v);
    }
  }
  ~NoProxy() {
    for (auto& [k, v] : saved_) setenv(k.c_str(), v.c_str(), 1);
  }

 private:
  std::map<std::string, std::string> saved_;
};

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

#define EXPECT_HAS(text, piece) EXPECT_NE((text).find(piece), std::string::npos) << (text)

TEST(HttpFetch, GoodDownloadVerifiesConvertsAndIsNotFetchedTwice) {
  NoProxy np;
  TempDir src, dst;
  testing::make_idx_dir(src.path(), 30, 10, true);
  LoopbackServer server;
  FetchSpec spec = fetch_spec(SourceFormat::Mnist);
  for (RemoteFile& f : spec.files) {
    server.serve("/mnist/" + f.name, slurp(src.file(f.name)));
    f.md5 = md5_file(src.file(f.name));
  }
  std::ostringstream log;
  auto written = fetch(spec, dst.file("m"), server.url() + "mnist", &log);
  ASSERT_EQ(written.size(), 4u);
  for (const RemoteFile& f : spec.files) {
    EXPECT_EQ(md5_file(dst.file("m/" + f.name)), f.md5);
    EXPECT_EQ(server.requests("/mnist/" + f.name), 1);
  }
  EXPECT_HAS(log.str(), "downloading " + server.url() + "mnist/train-images-idx3-ubyte.gz");
  fetch(spec, dst.file("m"), server.url() + "mnist/", &log);  // present with the right sums: no request
  for (const RemoteFile& f : spec.files) EXPECT_EQ(server.requests("/mnist/" + f.name), 1);
  for (const std::string& name : files_in(dst.file("m"))) EXPECT_EQ(name.find(".part"), std::string::npos) << name;
  std::ostringstream out, err;
  ASSERT_EQ(run_data_command({"convert", "--format", "mnist", "--src", dst.file("m"), "--out", dst.file("m.h5")}, out,
                             err),
            0)
      << err.str();
  EXPECT_HAS(out.str(), "train 30 x 28x28x1");
}

TEST(HttpFetch, RealFashionMnistThroughTheCommandWithTheOfficialChecksums) {
  const std::string real = LOCKSTEP_SHARED_DATASETS "/fashion-mnist";
  if (!fs::exists(real + "/train-images-idx3-ubyte.gz")) GTEST_SKIP() << real << " is absent";
  NoProxy np;
  TempDir dst;
  LoopbackServer server;
  for (const RemoteFile& f : fetch_spec(SourceFormat::FashionMnist).files) server.serve("/" + f.name, slurp(real + "/" + f.name));
  std::ostringstream out, err;
  ASSERT_EQ(run_data_command({"fetch", "fashion-mnist", "--dir", dst.path(), "--mirror", server.url()}, out, err), 0)
      << err.str();
  EXPECT_HAS(out.str(), "train-images-idx3-ubyte.gz: MD5 8d4fb7e6c68d591d4c3dfef9ec88bf0d OK");
  std::ostringstream o2, e2;
  ASSERT_EQ(run_data_command({"convert", "--format", "fashion-mnist", "--src", dst.path(), "--out", dst.file("f.h5")},
                             o2, e2),
            0)
      << e2.str();
  EXPECT_HAS(o2.str(), "train 60000 x 28x28x1, test 10000");
}

TEST(HttpFetch, ChecksumMismatchIsRefusedNamingTheFileAndBothSums) {
  NoProxy np;
  TempDir src, dst;
  testing::make_idx_dir(src.path(), 5, 5, true);
  LoopbackServer server;
  for (const RemoteFile& f : fetch_spec(SourceFormat::FashionMnist).files) server.serve("/" + f.name, slurp(src.file(f.name)));
  const std::string got = md5_file(src.file("train-images-idx3-ubyte.gz"));
  std::ostringstream out, err;
  EXPECT_EQ(run_data_command({"fetch", "fashion-mnist", "--dir", dst.path(), "--mirror", server.url()}, out, err), 2);
  EXPECT_HAS(err.str(), "train-images-idx3-ubyte.gz");
  std::cout << "  " << err.str();
  EXPECT_HAS(err.str(), "MD5 mismatch");
  EXPECT_HAS(err.str(), got);
  EXPECT_HAS(err.str(), "8d4fb7e6c68d591d4c3dfef9ec88bf0d");
  EXPECT_TRUE(files_in(dst.path()).empty()) << files_in(dst.path()).front();
}

TEST(HttpFetch, NotFoundAndConnectionRefusedAreClearErrors) {
  NoProxy np;
  TempDir dst;
  LoopbackServer server;
  std::ostringstream out, err;
  EXPECT_EQ(run_data_command({"fetch", "mnist", "--dir", dst.path(), "--mirror", server.url() + "nothing/"}, out, err), 2);
  EXPECT_HAS(err.str(), server.url() + "nothing/train-images-idx3-ubyte.gz");
  std::cout << "  " << err.str();
  EXPECT_HAS(err.str(), "HTTP 404");
  EXPECT_TRUE(files_in(dst.path()).empty());

  // A port nobody listens on: bind one, note it, close it.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  ::close(fd);
  std::ostringstream o2, e2;
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/";
  EXPECT_EQ(run_data_command({"fetch", "cifar10", "--dir", dst.path(), "--mirror", url}, o2, e2), 2);
  EXPECT_HAS(e2.str(), url + "cifar-10-binary.tar.gz");
  std::cout << "  " << e2.str();
  EXPECT_HAS(e2.str(), "onnect");  // libcurl: "Couldn't connect to server"
  EXPECT_TRUE(files_in(dst.path()).empty());
}

TEST(HttpFetch, TruncatedTransfersAreRefused) {
  NoProxy np;
  TempDir src, dst;
  ASSERT_EQ(testing::shell("head -c 300000 /dev/urandom > " + src.file("blob")), 0);
  LoopbackServer server;
  FetchSpec spec = fetch_spec(SourceFormat::Cifar10);
  spec.files[0].md5 = md5_file(src.file("blob"));
  // Cut short of its Content-Length: libcurl notices.
  server.serve("/len/cifar-10-binary.tar.gz", slurp(src.file("blob")), LoopbackServer::Mode::CutWithLength);
  try {
    fetch(spec, dst.path(), server.url() + "len", nullptr);
    FAIL() << "a truncated transfer was accepted";
  } catch (const DataError& e) {
    EXPECT_HAS(std::string(e.what()), "cifar-10-binary.tar.gz");
    std::cout << "  " << e.what() << "\n";
    EXPECT_HAS(std::string(e.what()), "partial");
  }
  EXPECT_TRUE(files_in(dst.path()).empty());
  // Closed early with no length announced: the transfer looks complete, the checksum refuses it.
  server.serve("/nolen/cifar-10-binary.tar.gz", slurp(src.file("blob")), LoopbackServer::Mode::CutWithoutLength);
  try {
    fetch(spec, dst.path(), server.url() + "nolen", nullptr);
    FAIL() << "a truncated transfer was accepted";
  } catch (const DataError& e) {
    EXPECT_HAS(std::string(e.what()), "cifar-10-binary.tar.gz");
    EXPECT_HAS(std::string(e.what()), "MD5 mismatch");
  }
  EXPECT_TRUE(files_in(dst.path()).empty());
  // And the whole file, served properly, goes through (then fails to unpack: it is not a tarball,
  // which is reported naming the archive).
  server.serve("/ok/cifar-10-binary.tar.gz", slurp(src.file("blob")));
  try {
    fetch(spec, dst.path(), server.url() + "ok", nullptr);
    FAIL() << "random bytes unpacked as a tarball";
  } catch (const DataError& e) {
    EXPECT_HAS(std::string(e.what()), "cifar-10-binary.tar.gz");
  }
}

}  // namespace
}  // namespace lockstep::data
