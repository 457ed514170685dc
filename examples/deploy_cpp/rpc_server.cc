/*
 * rpc_server: a TVM RPC server on the TVM runtime alone (no Python on the board).
 *
 *   rpc_server [--host 0.0.0.0] [--port 9090] [--port-end 9199] [--key KEY]
 *              [--tracker HOST:PORT] [--custom-addr ADDR] [--work-dir DIR] [--once]
 *
 * What a client (tvm.rpc.connect / tvm.rpc.connect_tracker(...).request(key)) expects, as in
 * tvm/rpc/server.py and apps/cpp_rpc:
 *   1. handshake on the data socket: the client sends RPC_MAGIC (int32), a key length (int32)
 *      and "client:MATCHKEY[ -timeout=N]"; we answer RPC_CODE_SUCCESS (or RPC_CODE_MISMATCH),
 *      then the length and text of "server:KEY";
 *   2. the session itself: the runtime's registered "rpc.ServerLoop"(fd) runs the RPC protocol
 *      on the socket until the client disconnects;
 *   3. the server environment: "tvm.rpc.server.upload/download/remove" (in libtvm_runtime) store
 *      files under "tvm.rpc.server.workpath"(name), which the server must register, as it must
 *      "tvm.rpc.server.load_module"(name) (remote.load_module). Each session gets a fresh
 *      directory under --work-dir, removed when the session ends.
 * Each session runs in a forked child (as TVM's servers do) so a crashing model or a session
 * timeout (-timeout=N from the client: alarm(N)) never takes the listening server down.
 *
 * With --tracker the server registers with an RPC tracker (tvm/rpc/tracker.py protocol:
 * RPC_TRACKER_MAGIC, then [int32 size][json] messages): UPDATE_INFO, PUT [key, [port, matchkey],
 * addr], and while idle it pings GET_PENDING_MATCHKEYS and re-registers a fresh match key if a
 * client took the key but never connected. Without --tracker the match key is KEY itself
 * (tvm.rpc.connect(host, port, key=KEY); the default key is empty).
 *
 * The first line on stdout is "rpc_server listening on HOST:PORT" (with --port 0 the OS picks
 * the port). Only tvm-ffi headers are used (the TVM wheels ship an incomplete tvm/runtime tree).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>

namespace ffi = tvm::ffi;

namespace {

// tvm/rpc/base.py
constexpr int32_t kRPCMagic = 0xFF271;
constexpr int32_t kRPCTrackerMagic = 0x2F271;
constexpr int32_t kRPCSuccess = kRPCMagic + 0;
constexpr int32_t kRPCMismatch = kRPCMagic + 2;
constexpr int kTrackerSuccess = 0, kTrackerPut = 3, kTrackerUpdateInfo = 5, kTrackerPendingKeys = 7;
constexpr int kPingPeriodS = 2;      // idle: ask the tracker every 2 s whether our key is still pending
constexpr int kUnmatchTimeoutS = 6;  // key taken by a client that never connected: re-register after this
constexpr int kMaxKeyBytes = 4096;

struct Options {
  std::string host = "0.0.0.0";
  int port = 9090;
  int port_end = 9199;
  std::string key;
  std::string tracker;  // HOST:PORT or empty
  std::string custom_addr;
  std::string work_dir;
  bool once = false;
};

[[noreturn]] void Usage(const std::string& why) {
  std::cerr << "error: " << why << "\n"
            << "usage: rpc_server [--host 0.0.0.0] [--port 9090] [--port-end 9199] [--key KEY]\n"
            << "                  [--tracker HOST:PORT] [--custom-addr ADDR] [--work-dir DIR] [--once]\n";
  std::exit(2);
}

int ParsePort(const std::string& text, const char* flag) {
  try {
    size_t used = 0;
    int v = std::stoi(text, &used);
    if (used == text.size() && v >= 0 && v <= 65535) return v;
  } catch (const std::exception&) {
  }
  Usage(std::string(flag) + " must be a port number 0..65535 (got '" + text + "')");
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  bool port_end_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--host") opt.host = value();
    else if (arg == "--port") opt.port = ParsePort(value(), "--port");
    else if (arg == "--port-end") { opt.port_end = ParsePort(value(), "--port-end"); port_end_given = true; }
    else if (arg == "--key") opt.key = value();
    else if (arg == "--tracker") opt.tracker = value();
    else if (arg == "--custom-addr") opt.custom_addr = value();
    else if (arg == "--work-dir") opt.work_dir = value();
    else if (arg == "--once") opt.once = true;
    else if (arg == "-h" || arg == "--help") Usage("help requested");
    else Usage("unknown argument " + arg);
  }
  if (opt.port == 0 || !port_end_given) opt.port_end = std::max(opt.port_end, opt.port);
  if (opt.port_end < opt.port) Usage("--port-end must be >= --port");
  if (!opt.tracker.empty() && opt.tracker.rfind(':') == std::string::npos) Usage("--tracker must be HOST:PORT");
  if (!opt.tracker.empty() && opt.key.empty()) Usage("--tracker needs --key (the device key clients request)");
  if (opt.key.find_first_of(" \t\n") != std::string::npos) Usage("--key must not contain whitespace");
  if (opt.work_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    opt.work_dir = tmp && *tmp ? tmp : "/tmp";
  }
  return opt;
}

void Log(const std::string& msg) { std::cerr << "rpc_server: " << msg << std::endl; }

// --- sockets ------------------------------------------------------------------------------------

bool SendAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool RecvAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t k = recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool SendInt(int fd, int32_t v) { return SendAll(fd, &v, sizeof(v)); }  // little-endian hosts only

bool SendString(int fd, const std::string& s) {
  return SendInt(fd, static_cast<int32_t>(s.size())) && SendAll(fd, s.data(), s.size());
}

int Listen(const Options& opt, int* bound_port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (inet_pton(AF_INET, opt.host.c_str(), &addr.sin_addr) != 1) {
    throw std::runtime_error("--host must be an IPv4 address (got '" + opt.host + "')");
  }
  for (int port = opt.port; port <= opt.port_end; ++port) {
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      if (listen(fd, 4) != 0) throw std::runtime_error(std::string("listen: ") + std::strerror(errno));
      socklen_t len = sizeof(addr);
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
      *bound_port = ntohs(addr.sin_port);
      return fd;
    }
    if (errno != EADDRINUSE) break;
  }
  throw std::runtime_error("cannot bind to " + opt.host + " ports " + std::to_string(opt.port) + ".." +
                           std::to_string(opt.port_end) + ": " + std::strerror(errno));
}

int Connect(const std::string& host_port) {
  size_t colon = host_port.rfind(':');
  std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) return -1;
  int fd = -1;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
    if (fd >= 0) close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

// --- tracker ------------------------------------------------------------------------------------

std::string JsonString(const std::string& s) {  // keys and addresses: no control characters
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

class Tracker {
 public:
  Tracker(const Options& opt, int port) : opt_(opt), port_(port), rng_(std::random_device{}()) {}
  ~Tracker() { Close(); }

  bool enabled() const { return !opt_.tracker.empty(); }

  // (Re)connect and register; false (after logging) if the tracker cannot be reached.
  bool Register() {
    if (!enabled()) {
      matchkey_ = opt_.key;
      return true;
    }
    if (fd_ < 0) {
      fd_ = Connect(opt_.tracker);
      int32_t magic = 0;
      if (fd_ < 0 || !SendInt(fd_, kRPCTrackerMagic) || !RecvAll(fd_, &magic, sizeof(magic))) {
        Log("cannot reach the RPC tracker at " + opt_.tracker + "; retrying");
        Close();
        return false;
      }
      if (magic != kRPCTrackerMagic) throw std::runtime_error(opt_.tracker + " is not an RPC tracker");
      std::string addr = opt_.custom_addr.empty() ? "null" : JsonString(opt_.custom_addr);
      if (!Call("[" + std::to_string(kTrackerUpdateInfo) + ", {\"key\": " + JsonString("server:" + opt_.key) +
                ", \"addr\": [" + addr + ", " + std::to_string(port_) + "]}]")) {
        return false;
      }
    }
    matchkey_ = opt_.key + ":" + std::to_string(std::uniform_real_distribution<double>(0, 1)(rng_));
    std::string addr = opt_.custom_addr.empty() ? "null" : JsonString(opt_.custom_addr);
    if (!Call("[" + std::to_string(kTrackerPut) + ", " + JsonString(opt_.key) + ", [" + std::to_string(port_) +
              ", " + JsonString(matchkey_) + "], " + addr + "]")) {
      return false;
    }
    unmatched_s_ = 0;
    return true;
  }

  // Called every kPingPeriodS while idle: re-register if our key was taken but never used.
  void Ping() {
    if (!enabled()) return;
    std::string reply;
    if (fd_ < 0 || !Message("[" + std::to_string(kTrackerPendingKeys) + "]", &reply)) {
      Close();
      Register();
      return;
    }
    unmatched_s_ = reply.find(JsonString(matchkey_)) == std::string::npos ? unmatched_s_ + kPingPeriodS : 0;
    if (unmatched_s_ > kUnmatchTimeoutS) {
      Log("match key taken but no client connected; registering a new one");
      Register();
    }
  }

  const std::string& matchkey() const { return matchkey_; }
  bool connected() const { return !enabled() || fd_ >= 0; }

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  bool Message(const std::string& json, std::string* reply) {
    int32_t size = 0;
    if (!SendString(fd_, json) || !RecvAll(fd_, &size, sizeof(size)) || size < 0 || size > (1 << 24)) return false;
    reply->assign(static_cast<size_t>(size), '\0');
    return RecvAll(fd_, &(*reply)[0], static_cast<size_t>(size));
  }

  bool Call(const std::string& json) {
    std::string reply;
    if (!Message(json, &reply) || reply != std::to_string(kTrackerSuccess)) {
      Log("RPC tracker at " + opt_.tracker + " refused " + json + " (reply: " + reply + ")");
      Close();
      return false;
    }
    return true;
  }

  const Options& opt_;
  int port_;
  int fd_ = -1;
  int unmatched_s_ = 0;
  std::string matchkey_;
  std::mt19937_64 rng_;
};

// --- one session (in a forked child) ------------------------------------------------------------

std::string g_session_dir;  // the child's working directory for uploaded files

std::string WorkPath(const std::string& name) {
  if (name.empty() || name[0] == '/' || name.find("..") != std::string::npos) {
    throw std::runtime_error("rpc_server: file names must be relative, without '..' (got '" + name + "')");
  }
  return g_session_dir + "/" + name;
}

void RegisterServerEnv() {
  ffi::Function::SetGlobal(
      "tvm.rpc.server.workpath",
      ffi::Function::FromTyped([](ffi::String name) -> ffi::String { return WorkPath(std::string(name)); }), true);
  ffi::Function::SetGlobal("tvm.rpc.server.load_module", ffi::Function::FromTyped([](ffi::String name) {
                             std::string path = WorkPath(std::string(name));
                             Log("load_module " + path);
                             return ffi::Module::LoadFromFile(path);
                           }),
                           true);
}

void RemoveTree(const std::string& path) {
  DIR* dir = opendir(path.c_str());
  if (dir != nullptr) {
    while (dirent* e = readdir(dir)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string child = path + "/" + name;
      struct stat st{};
      if (lstat(child.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) RemoveTree(child);
      else unlink(child.c_str());
    }
    closedir(dir);
  }
  rmdir(path.c_str());
}

int ParseTimeout(const std::string& client_key) {
  const std::string flag = "-timeout=";
  size_t pos = client_key.rfind(flag);
  if (pos == std::string::npos) return 0;
  return std::max(0, std::atoi(client_key.c_str() + pos + flag.size()));
}

[[noreturn]] void ServeChild(int conn, int timeout_s, const std::string& session_dir) {
  if (timeout_s > 0) alarm(static_cast<unsigned>(timeout_s));  // SIGALRM ends an overlong session
  g_session_dir = session_dir;
  try {
    RegisterServerEnv();
    ffi::Function::GetGlobalRequired("rpc.ServerLoop")(static_cast<int64_t>(conn));
  } catch (const std::exception& e) {  // ffi::Error is a std::exception
    Log(std::string("session failed: ") + e.what());
    _exit(1);
  }
  _exit(0);
}

// Handshake on an accepted socket; returns the client's key text, or "" when it is not ours.
std::string Handshake(int conn, const std::string& matchkey, const std::string& server_key) {
  int32_t magic = 0, keylen = 0;
  if (!RecvAll(conn, &magic, sizeof(magic)) || magic != kRPCMagic) return "";
  if (!RecvAll(conn, &keylen, sizeof(keylen)) || keylen <= 0 || keylen > kMaxKeyBytes) return "";
  std::string key(static_cast<size_t>(keylen), '\0');
  if (!RecvAll(conn, &key[0], key.size())) return "";
  std::string first = key.substr(0, key.find(' '));
  if (first != "client:" + matchkey) {
    SendInt(conn, kRPCMismatch);
    Log("key mismatch: client sent '" + first + "'");
    return "";
  }
  if (!SendInt(conn, kRPCSuccess) || !SendString(conn, server_key)) return "";
  return key;
}

void Serve(const Options& opt) {
  int port = 0;
  int listen_fd = Listen(opt, &port);
  std::printf("rpc_server listening on %s:%d\n", opt.host.c_str(), port);
  std::fflush(stdout);
  Tracker tracker(opt, port);
  const std::string server_key = "server:" + opt.key;
  bool registered = false;
  while (true) {
    if (!registered) registered = tracker.Register();
    fd_set fds;
    FD_ZERO(&fds);
    FD_SET(listen_fd, &fds);
    timeval tv{kPingPeriodS, 0};
    int ready = select(listen_fd + 1, &fds, nullptr, nullptr, tracker.enabled() ? &tv : nullptr);
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {  // idle
      if (registered) tracker.Ping();
      registered = registered && tracker.connected();
      continue;
    }
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    int conn = accept(listen_fd, reinterpret_cast<sockaddr*>(&peer), &len);
    if (conn < 0) continue;
    int one = 1;
    setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char peer_text[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &peer.sin_addr, peer_text, sizeof(peer_text));
    std::string client_key = Handshake(conn, tracker.matchkey(), server_key);
    if (client_key.empty()) {
      close(conn);
      continue;
    }
    std::string templ = opt.work_dir + "/tvm_rpc_session_XXXXXX";
    if (mkdtemp(&templ[0]) == nullptr) {
      Log("cannot create a session directory under " + opt.work_dir + ": " + std::strerror(errno));
      close(conn);
      continue;
    }
    int timeout_s = ParseTimeout(client_key);
    Log(std::string("session from ") + peer_text + " in " + templ +
        (timeout_s ? " (timeout " + std::to_string(timeout_s) + " s)" : ""));
    pid_t pid = fork();
    if (pid == 0) {
      close(listen_fd);
      tracker.Close();  // the child must not talk to the tracker
      ServeChild(conn, timeout_s, templ);
    }
    close(conn);
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    RemoveTree(templ);
    if (pid < 0) Log(std::string("fork failed: ") + std::strerror(errno));
    else if (WIFSIGNALED(status)) Log("session ended by signal " + std::to_string(WTERMSIG(status)));
    else Log("session ended (exit " + std::to_string(WEXITSTATUS(status)) + ")");
    if (opt.once) break;
    registered = registered && tracker.connected() && tracker.Register();  // a fresh match key per session
  }
  close(listen_fd);
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  try {
    Serve(opt);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
