import FoundationEssentials
import ModelessBus
import ModelessRuntime
import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension VM {
    /// `modeless run e1000 ADDR --tap NAME`: the kernel's own IP stack uses the first e1000
    /// (00:04.0) through the user-mode driver and a TAP interface, and talks to the kernel's
    /// e1000 driver on the second NIC of the same hub. The two NICs belong to one kernel, so
    /// the kernel's NIC is moved into a network namespace of its own (held by a process): its
    /// traffic then really crosses the wire instead of being delivered locally.
    ///
    /// `MODELESS_TAP_KILLS` (default 3) sets how many times the driver is killed under a
    /// stream; `MODELESS_TAP_MIB` (default 64) the size of each transfer.
    @Suite("e1000 driver serving the kernel through a TAP")
    struct TapIntegrationTests {
        static let tapName = "mtap0", tapAddress = "10.79.0.2/24", peerAddress = "10.79.0.1"

        static func setting(_ name: String, default value: Int) -> Int {
            getenv(name).flatMap { Int(String(cString: $0)) } ?? value
        }
        static var kills: Int { setting("MODELESS_TAP_KILLS", default: 3) }
        static var mebibytes: Int { setting("MODELESS_TAP_MIB", default: 64) }

        /// The kernel's NIC in its own network namespace.
        struct Peer {
            let holder: String
            let interface: String
            /// Runs `script` in the peer's namespace.
            func run(_ script: String) throws -> ProgramResult {
                try TestBench.shell("nsenter -t \(holder) -n sh -c '\(script)'")
            }
        }

        /// Loads tun and e1000, binds our NIC to vfio-pci, moves the kernel's NIC into a new
        /// network namespace with 10.79.0.1/24, runs `body`, and undoes it all.
        func withBench(_ body: (PCIAddress, Peer) throws -> Void) throws {
            let ours = try TestBench.e1000(0), kernelNIC = try TestBench.e1000(1)
            let loaded = try TestBench.shell("modprobe tun && modprobe e1000")
            try #require(loaded.status == 0, "\(loaded.output)")
            _ = try? TestBench.shell("ip link del \(Self.tapName) 2>/dev/null")
            let binder = PCIBinder()
            _ = try binder.bind(.address(ours), to: .vfioPCI, force: true)
            defer { _ = try? binder.unbind(.address(ours)) }
            var interface = ""
            for _ in 0..<300 where interface.isEmpty {
                interface = (try? TestBench.shell("ls /sys/bus/pci/devices/\(kernelNIC)/net/").output)
                    .flatMap { $0.split(whereSeparator: \.isWhitespace).first.map(String.init) } ?? ""
                if interface.isEmpty { usleep(100_000) }
            }
            try #require(!interface.isEmpty, "the kernel's e1000 has no interface")
            let holder = try TestBench.shell("unshare -n sleep 100000 >/dev/null 2>&1 & echo $!").output.trimmingBlanks()
            // The NIC goes back to the initial namespace at once (a namespace's end would return
            // it too, but later, from a work queue), then the namespace ends with its holder.
            defer {
                _ = try? TestBench.shell("nsenter -t \(holder) -n ip link set \(interface) netns 1")
                _ = try? TestBench.shell("kill \(holder)")
            }
            // Wait until the holder is in its own namespace (unshare has run) before moving the NIC.
            let separate = try TestBench.shell("for i in $(seq 100); do [ \"$(readlink /proc/\(holder)/ns/net)\" != \"$(readlink /proc/self/ns/net)\" ] && exit 0; sleep 0.1; done; exit 1")
            try #require(separate.status == 0, "the namespace holder \(holder) has no namespace of its own")
            let moved = try TestBench.shell("ip link set \(interface) netns \(holder)")
            try #require(moved.status == 0, "\(moved.output)")
            let peer = Peer(holder: holder, interface: interface)
            let configured = try peer.run("ip link set lo up && ip addr add \(Self.peerAddress)/24 dev \(interface) && ip link set \(interface) up")
            try #require(configured.status == 0, "\(configured.output)")
            try body(ours, peer)
        }

        /// Starts the driver in TAP mode and waits for it to say it forwards.
        func startDriver(_ address: PCIAddress, _ mode: ExecutionMode, persist: Bool = false) throws -> ChildProcess {
            var arguments = ["run", "e1000", address.description, "--tap", Self.tapName, "--tap-address", Self.tapAddress, "--mode", mode.description]
            if persist { arguments.append("--persist") }
            let driver = try ChildProcess(try ProgramRunner.builtProgram("modeless"), arguments)
            var lines: [String] = []
            while let line = driver.readLine(timeout: 120) {
                lines.append(line)
                if line.contains("serving TAP") { return driver }
            }
            driver.signal(SIGKILL)
            _ = try? driver.wait()
            Issue.record("the driver did not start: \(lines.joined(separator: "\n"))")
            throw ExitStatusError(lines: lines)
        }

        struct ExitStatusError: Error { var lines: [String] }

        static func stop(_ driver: ChildProcess) throws -> Int32 {
            driver.signal(SIGTERM)
            return try driver.wait()
        }

        static func exists(_ name: String) -> Bool { FileAccess.exists("/sys/class/net/\(name)") }

        /// Writes `mebibytes` of random data to `path`; returns its SHA-256.
        static func randomFile(_ path: String, mebibytes: Int) throws -> String {
            let made = try TestBench.shell("head -c \(mebibytes)M /dev/urandom > \(path) && sha256sum < \(path)")
            try #require(made.status == 0, "\(made.output)")
            return String(made.output.prefix(64))
        }

        /// Starts a receiver in the peer's namespace writing what arrives on TCP port `port`
        /// to `path`; returns its pid.
        static func startReceiver(_ peer: Peer, port: Int, into path: String) throws -> String {
            let started = try peer.run("nc -l -p \(port) > \(path) 2>/dev/null & echo $!")
            try #require(started.status == 0, "\(started.output)")
            usleep(300_000)
            return started.output.trimmingBlanks()
        }

        /// Waits (up to `seconds`) for process `pid` to end.
        static func waitForExit(_ pid: String, seconds: Int) throws -> Bool {
            try TestBench.shell("for i in $(seq \(seconds * 5)); do kill -0 \(pid) 2>/dev/null || exit 0; sleep 0.2; done; exit 1").status == 0
        }

        /// The CPU time (user and system) process `pid` used over the next `seconds`.
        static func cpuSeconds(_ pid: pid_t, over seconds: UInt32) -> Double {
            func ticks() -> Int {
                guard let stat = FileAccess.readTextIfPresent("/proc/\(pid)/stat"),
                      let end = stat.lastIndex(of: ")") else { return 0 }
                let fields = stat[stat.index(after: end)...].split(separator: " ")
                return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)  // utime, stime (fields 14 and 15)
            }
            let before = ticks()
            sleep(seconds)
            return Double(ticks() - before) / Double(sysconf(Int32(_SC_CLK_TCK)))
        }

        static func tenths(_ seconds: Double) -> String { "\(Int(seconds * 10) / 10).\(Int(seconds * 10) % 10)" }

        static func fileSize(_ path: String) -> Int {
            var info = stat()
            return stat(path, &info) == 0 ? Int(info.st_size) : 0
        }

        @Test(arguments: ExecutionMode.allCases)
        func pingAndAChecksummedTransfer(_ mode: ExecutionMode) throws {
            try withBench { address, peer in
                let driver = try startDriver(address, mode)
                let ping = try TestBench.shell("busybox ping -c 3 -W 5 \(Self.peerAddress)")
                #expect(ping.status == 0, "ping through the TAP: \(ping.output)")
                let sent = try Self.randomFile("/tmp/tap-sent", mebibytes: Self.mebibytes)
                let receiver = try Self.startReceiver(peer, port: 5001, into: "/tmp/tap-received")
                let started = monotonicNanoseconds()
                let transfer = try TestBench.shell("timeout 900 nc -N \(Self.peerAddress) 5001 < /tmp/tap-sent")
                #expect(transfer.status == 0, "\(transfer.output)")
                #expect(try Self.waitForExit(receiver, seconds: 60), "the receiver saw the end of the stream")
                let seconds = Double(monotonicNanoseconds() - started) / 1e9
                let received = try TestBench.shell("sha256sum < /tmp/tap-received").output.prefix(64)
                #expect(String(received) == sent, "\(Self.fileSize("/tmp/tap-received")) of \(Self.mebibytes << 20) bytes arrived")
                print("TAP \(mode): \(Self.mebibytes) MiB in \(Self.tenths(seconds)) s")
                // Idle, the driver sleeps: epoll on the TAP, interrupts from the NIC.
                let idle = Self.cpuSeconds(driver.processID, over: 3)
                print("TAP \(mode): idle CPU \(Int(idle * 1000)) ms in 3 s")
                #expect(idle < 0.3, "the idle driver used \(idle) s of CPU in 3 s")
                #expect(try Self.stop(driver) == 0)
                #expect(!Self.exists(Self.tapName), "a TAP that was not persistent goes with the driver")
                _ = try? TestBench.shell("rm -f /tmp/tap-sent /tmp/tap-received")
            }
        }

        @Test func aPersistentTapCarriesAStreamAcrossDriverKills() throws {
            try withBench { address, peer in
                defer { _ = try? TestBench.shell("ip link del \(Self.tapName)") }
                var driver = try startDriver(address, .user, persist: true)
                let sent = try Self.randomFile("/tmp/tap-sent", mebibytes: Self.mebibytes)
                defer { _ = try? TestBench.shell("rm -f /tmp/tap-sent /tmp/tap-received") }
                let receiver = try Self.startReceiver(peer, port: 5002, into: "/tmp/tap-received")
                let sender = try TestBench.shell("nc -N \(Self.peerAddress) 5002 < /tmp/tap-sent >/dev/null 2>&1 & echo $!").output.trimmingBlanks()
                var killed = 0
                var progress = 0
                var stalls: [Double] = []
                for _ in 0..<Self.kills {
                    // Kill only once the stream has moved on since the last restart.
                    let deadline = monotonicNanoseconds() + 180_000_000_000
                    while Self.fileSize("/tmp/tap-received") < progress + (1 << 20) && monotonicNanoseconds() < deadline { usleep(100_000) }
                    let size = Self.fileSize("/tmp/tap-received")
                    guard size >= progress + (1 << 20), size < Self.mebibytes << 20 else { break }
                    let killedAt = monotonicNanoseconds()
                    driver.signal(SIGKILL)
                    _ = try driver.wait()
                    killed += 1
                    progress = Self.fileSize("/tmp/tap-received")
                    #expect(Self.exists(Self.tapName), "the persistent TAP survives the kill")
                    driver = try startDriver(address, .user)
                    let restarted = monotonicNanoseconds()
                    // The stall: from the kill until data flows again.
                    while Self.fileSize("/tmp/tap-received") <= progress && monotonicNanoseconds() < restarted + 120_000_000_000 { usleep(20_000) }
                    let resumed = monotonicNanoseconds()
                    stalls.append(Double(resumed - killedAt) / 1e9)
                    print("TAP kill \(killed): driver restarted after \(Self.tenths(Double(restarted - killedAt) / 1e9)) s, stream resumed after \(Self.tenths(stalls.last!)) s")
                }
                let sorted = stalls.sorted()
                if !sorted.isEmpty {
                    print("TAP kills: \(killed), stall p50 \(Self.tenths(sorted[sorted.count / 2])) s, max \(Self.tenths(sorted.last!)) s")
                }
                #expect(killed == Self.kills, "killed \(killed) of \(Self.kills) times before the stream ended (\(progress) bytes)")
                #expect(try Self.waitForExit(sender, seconds: 900), "the sender finished")
                #expect(try Self.waitForExit(receiver, seconds: 60), "the receiver saw the end of the stream")
                let received = try TestBench.shell("sha256sum < /tmp/tap-received").output.prefix(64)
                #expect(String(received) == sent, "\(Self.fileSize("/tmp/tap-received")) of \(Self.mebibytes << 20) bytes arrived")
                #expect(try Self.stop(driver) == 0)
                #expect(Self.exists(Self.tapName), "a persistent TAP stays after the driver stops")
            }
        }

        @Test func aNameInUseOrInvalidIsRefusedWithNothingLeftBehind() throws {
            try withBench { address, peer in
                let before = try TestBench.shell("ip -o link show | cut -d: -f2 | sort").output
                for (name, status, message) in [("lo", Int32(64), "not a TAP"), ("bad/name", 64, "not a valid interface name"),
                                                ("sixteen-chars-xx", 64, "not a valid interface name")] {
                    let result = try TestBench.modeless("run", "e1000", address.description, "--tap", name)
                    #expect(result.status == status && result.output.contains(message), "\(name): \(result.output)")
                }
                // A TAP held by a running driver is refused to a second one.
                let driver = try startDriver(address, .user)
                let second = try TestBench.modeless("run", "e1000", address.description, "--tap", Self.tapName)
                #expect(second.status == 75 && second.output.contains("already attached"), "\(second.output)")
                #expect(try Self.stop(driver) == 0)
                // Without CAP_NET_ADMIN.
                let denied = try TestBench.shell("setpriv --bounding-set -net_admin \(try ProgramRunner.builtProgram("modeless")) run e1000 \(address) --tap \(Self.tapName)")
                #expect(denied.status == 77 && denied.output.contains("CAP_NET_ADMIN"), "\(denied.output)")
                // Without the tun module: /dev/net/tun hidden in a mount namespace of its own.
                let missing = try TestBench.shell("unshare -m sh -c 'mount -t tmpfs none /dev/net && exec \(try ProgramRunner.builtProgram("modeless")) run e1000 \(address) --tap \(Self.tapName)'")
                #expect(missing.status == 69 && missing.output.contains("modprobe tun"), "\(missing.output)")
                // A TAP created for a device that then cannot be opened (the kernel's NIC, bound to
                // its e1000 driver) is deleted again, persistent or not.
                for persist in ["", " --persist"] {
                    let unopenable = try TestBench.shell("\(try ProgramRunner.builtProgram("modeless")) run e1000 \(try TestBench.e1000(1)) --tap \(Self.tapName)\(persist)")
                    #expect(unopenable.status != 0 && !Self.exists(Self.tapName), "\(unopenable.output)")
                }
                let after = try TestBench.shell("ip -o link show | cut -d: -f2 | sort").output
                #expect(after == before, "no interface left behind")
                _ = peer
            }
        }
    }
}
