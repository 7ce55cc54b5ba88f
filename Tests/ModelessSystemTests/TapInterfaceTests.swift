import ModelessSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// TAP interfaces: names checked before anything is created, interfaces of other kinds and
/// a missing clone device refused with nothing created; and, where this machine lets a test
/// create a TAP (root and `/dev/net/tun`), creation, attaching, persistence and removal.
@Suite("TAP interfaces")
struct TapInterfaceTests {
    /// A name no other test or process uses.
    static func uniqueName(_ tag: String) -> String { "mdl\(tag)\(getpid() % 100_000)" }

    static func exists(_ name: String) -> Bool { FileAccess.exists("/sys/class/net/\(name)") }

    static let canCreate: Bool = geteuid() == 0 && access(TapInterface.defaultCloneDevice, R_OK | W_OK) == 0

    @Test(arguments: ["", "sixteen-chars-xx", "a/b", "a:b", "a b", "tab\tx", ".", "..", "tap%d"])
    func anInvalidNameIsRefusedBeforeAnythingIsCreated(_ name: String) {
        #expect {
            _ = try TapInterface.open(name, persistent: true)
        } throws: { error in
            guard case .invalidName(let refused, _) = error as? TapError else { return false }
            return refused == name && "\(error)".contains("not a valid interface name")
        }
        if !name.isEmpty && !name.contains("/") && name != "." && name != ".." { #expect(!Self.exists(name)) }
    }

    @Test func theLongestNameIsAccepted() throws {
        try TapInterface.validate("fifteen-chars-x")
    }

    @Test func anInterfaceOfAnotherKindIsRefusedAndLeftAsItWas() throws {
        let flags = FileAccess.readTextIfPresent("/sys/class/net/lo/flags")
        #expect {
            _ = try TapInterface.open("lo", persistent: true)
        } throws: { error in
            guard case .notTap("lo", let kind) = error as? TapError else { return false }
            return kind == "loopback" && "\(error)".contains("not a TAP")
        }
        #expect(FileAccess.readTextIfPresent("/sys/class/net/lo/flags") == flags)
        #expect(!FileAccess.exists("/sys/class/net/lo/tun_flags"))
    }

    @Test func aMissingCloneDeviceSaysToLoadTheModule() {
        let name = Self.uniqueName("n")
        #expect {
            _ = try TapInterface.open(name, persistent: false, cloneDevice: "/nonexistent/net/tun")
        } throws: { error in
            (error as? TapError) == .noCloneDevice("/nonexistent/net/tun") && "\(error)".contains("modprobe tun")
        }
        #expect(!Self.exists(name))
    }

    @Test(.enabled(if: canCreate, "needs root and /dev/net/tun"))
    func aTapLivesWithItsDescriptorAndIsHeldByOneProcessAtATime() throws {
        let name = Self.uniqueName("a")
        let tap = try TapInterface.open(name, persistent: false)
        #expect(tap.created && !tap.persistent)
        #expect(Self.exists(name))
        #expect(FileAccess.readTextIfPresent("/sys/class/net/\(name)/tun_flags").map { $0.contains("1002") } == true,
                "IFF_TAP | IFF_NO_PI")
        #expect(throws: TapError.busy(name)) { _ = try TapInterface.open(name, persistent: false) }
        #expect(Self.exists(name), "the refused attach left the interface as it was")
        var buffer = [UInt8](repeating: 0, count: 2048)
        #expect(try buffer.withUnsafeMutableBytes { try tap.read(into: $0) } == nil, "nothing to read: nil, not a block")
        tap.close()
        #expect(!Self.exists(name))
    }

    @Test(.enabled(if: canCreate, "needs root and /dev/net/tun"))
    func aPersistentTapOutlivesItsDescriptorAndIsAttachedAgain() throws {
        let name = Self.uniqueName("p")
        let first = try TapInterface.open(name, persistent: true)
        #expect(first.created && first.persistent)
        first.close()
        #expect(Self.exists(name))
        let second = try TapInterface.open(name, persistent: false)
        #expect(!second.created && second.persistent)
        second.abandon()
        #expect(Self.exists(name), "abandoning an attached TAP leaves it")
        let third = try TapInterface.open(name, persistent: false)
        third.remove()
        #expect(!Self.exists(name))
    }

    @Test(.enabled(if: canCreate, "needs root and /dev/net/tun"))
    func aCreatedTapIsDeletedWhenAbandoned() throws {
        let name = Self.uniqueName("c")
        let tap = try TapInterface.open(name, persistent: true)
        tap.abandon()
        #expect(!Self.exists(name))
    }

    @Test(.enabled(if: canCreate, "needs root and /dev/net/tun"))
    func aTunInterfaceOfThatNameIsRefused() throws {
        let name = Self.uniqueName("t")
        let made = try ProgramRunner.run("ip", ["tuntap", "add", "dev", name, "mode", "tun"])
        try #require(made.status == 0, "\(made.output)")
        defer { _ = try? ProgramRunner.run("ip", ["tuntap", "del", "dev", name, "mode", "tun"]) }
        #expect(throws: TapError.isTun(name)) { _ = try TapInterface.open(name, persistent: true) }
        #expect(FileAccess.readTextIfPresent("/sys/class/net/\(name)/tun_flags").map { $0.contains("1") } == true)
    }

    @Test(.enabled(if: canCreate, "needs root and /dev/net/tun"))
    func theInterfaceTakesAnAddressAndComesUp() throws {
        let name = Self.uniqueName("i")
        let tap = try TapInterface.open(name, persistent: false)
        defer { tap.close() }
        let interface = NetworkInterface(name)
        let mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x77]
        try interface.setHardwareAddress(mac)
        #expect(try interface.hardwareAddress() == mac)
        try interface.setUp(true)
        #expect(try interface.isUp())
        #expect(try interface.ipv4Address() == nil)
        let address = try #require(NetworkInterface.IPv4Address("10.213.77.2/24"))
        try interface.setIPv4Address(address)
        #expect(try interface.ipv4Address() == address)
        try interface.setHardwareAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x78])
        #expect(try interface.isUp(), "a change of address while up brings it up again")
    }

    @Test func addressesParse() {
        #expect(NetworkInterface.IPv4Address("10.0.0.2/24")?.mask == [255, 255, 255, 0])
        #expect(NetworkInterface.IPv4Address("10.0.0.2")?.prefixLength == 32)
        #expect(NetworkInterface.IPv4Address("10.0.0.2/33") == nil)
        #expect(NetworkInterface.IPv4Address("10.0.0/24") == nil)
        #expect(NetworkInterface.IPv4Address("10.0.0.256/24") == nil)
    }
}
