import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

/// Settings of a kernel network interface, made with the classic interface ioctls on an
/// `AF_INET` datagram socket (`SIOCSIFHWADDR`, `SIOCSIFFLAGS`, `SIOCSIFADDR`,
/// `SIOCSIFNETMASK`): its Ethernet address, up or down, and one IPv4 address.
///
/// Each call opens and closes its own control socket. Changing an interface needs
/// `CAP_NET_ADMIN`.
public struct NetworkInterface: Sendable {
    /// The interface's name.
    public let name: String

    /// The interface called `name` (`eth1`, `tap0`); whether it exists is found at the first call.
    public init(_ name: String) { self.name = name }

    /// `ARPHRD_ETHER` (<net/if_arp.h>, not in Swift's Glibc module): an Ethernet address.
    static let etherHardwareType = 1

    /// An IPv4 address with its prefix length, e.g. `10.0.0.2/24`.
    public struct IPv4Address: Sendable, Equatable, CustomStringConvertible {
        /// The four bytes, in network order.
        public var bytes: [UInt8]
        /// The prefix length, 0 to 32.
        public var prefixLength: Int

        /// Parses `a.b.c.d/n` (or `a.b.c.d`, taken as /32); nil if it is not one.
        public init?(_ text: String) {
            let parts = text.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { return nil }
            let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false)
            let bytes = octets.compactMap { UInt8($0) }
            guard octets.count == 4, bytes.count == 4 else { return nil }
            let prefix = parts.count == 2 ? Int(parts[1]) : 32
            guard let prefix, (0...32).contains(prefix) else { return nil }
            self.bytes = bytes
            prefixLength = prefix
        }

        /// The network mask of the prefix, in network order.
        public var mask: [UInt8] {
            let value: UInt32 = prefixLength == 0 ? 0 : UInt32.max << (32 - UInt32(prefixLength))
            return [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)]
        }

        /// The address in the `a.b.c.d/n` form ``init(_:)`` parses.
        public var description: String { bytes.map(String.init).joined(separator: ".") + "/\(prefixLength)" }
    }

    /// The interface's Ethernet address (`SIOCGIFHWADDR`).
    public func hardwareAddress() throws(SystemError) -> [UInt8] {
        var request = TapInterface.request(name)
        try control(UInt(SIOCGIFHWADDR), &request, "SIOCGIFHWADDR")
        return withUnsafeBytes(of: &request.ifr_ifru.ifru_hwaddr.sa_data) { Array($0.prefix(6)) }
    }

    /// Sets the interface's Ethernet address (`SIOCSIFHWADDR`), if it differs; an interface
    /// that is up is taken down for the change and brought up again.
    public func setHardwareAddress(_ address: [UInt8]) throws(SystemError) {
        precondition(address.count == 6, "an Ethernet address is 6 bytes")
        if try hardwareAddress() == address { return }
        let wasUp = try isUp()
        if wasUp { try setUp(false) }
        var request = TapInterface.request(name)
        request.ifr_ifru.ifru_hwaddr.sa_family = sa_family_t(Self.etherHardwareType)
        withUnsafeMutableBytes(of: &request.ifr_ifru.ifru_hwaddr.sa_data) { data in
            for index in 0..<6 { data[index] = address[index] }
        }
        try control(UInt(SIOCSIFHWADDR), &request, "SIOCSIFHWADDR")
        if wasUp { try setUp(true) }
    }

    /// Whether the interface is administratively up (`IFF_UP`).
    public func isUp() throws(SystemError) -> Bool {
        var request = TapInterface.request(name)
        try control(UInt(SIOCGIFFLAGS), &request, "SIOCGIFFLAGS")
        return Int(request.ifr_ifru.ifru_flags) & IFF_UP != 0
    }

    /// Brings the interface up or down (`IFF_UP` through `SIOCSIFFLAGS`).
    public func setUp(_ up: Bool) throws(SystemError) {
        var request = TapInterface.request(name)
        try control(UInt(SIOCGIFFLAGS), &request, "SIOCGIFFLAGS")
        let flags = Int(request.ifr_ifru.ifru_flags)
        let wanted = up ? flags | IFF_UP : flags & ~IFF_UP
        guard wanted != flags else { return }
        request.ifr_ifru.ifru_flags = Int16(truncatingIfNeeded: wanted)
        try control(UInt(SIOCSIFFLAGS), &request, "SIOCSIFFLAGS")
    }

    /// The interface's primary IPv4 address and mask, or nil if it has none.
    public func ipv4Address() throws(SystemError) -> IPv4Address? {
        var request = TapInterface.request(name)
        do { try control(UInt(SIOCGIFADDR), &request, "SIOCGIFADDR") } catch {
            if error.errno == .addressNotAvailable { return nil }
            throw error
        }
        let address = Self.bytes(of: request.ifr_ifru.ifru_addr)
        try control(UInt(SIOCGIFNETMASK), &request, "SIOCGIFNETMASK")
        let mask = Self.bytes(of: request.ifr_ifru.ifru_netmask)
        let prefix = mask.reduce(0) { $0 + $1.nonzeroBitCount }
        return IPv4Address("\(address.map(String.init).joined(separator: "."))/\(prefix)")
    }

    /// Gives the interface `address` as its primary IPv4 address, unless it already has it
    /// (re-setting it would flush the routes and connections that use it).
    public func setIPv4Address(_ address: IPv4Address) throws(SystemError) {
        if try ipv4Address() == address { return }
        var request = TapInterface.request(name)
        request.ifr_ifru.ifru_addr = Self.socketAddress(address.bytes)
        try control(UInt(SIOCSIFADDR), &request, "SIOCSIFADDR")
        request = TapInterface.request(name)
        request.ifr_ifru.ifru_netmask = Self.socketAddress(address.mask)
        try control(UInt(SIOCSIFNETMASK), &request, "SIOCSIFNETMASK")
    }

    private func control(_ command: UInt, _ request: inout ifreq, _ operation: String) throws(SystemError) {
        let socket = try systemCall("socket", "interface control for \(name)") { Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        defer { _ = Glibc.close(socket) }
        _ = try systemCall(operation, name) { withUnsafeMutableBytes(of: &request) { modeless_ioctl_ptr(socket, command, $0.baseAddress) } }
    }

    private static func socketAddress(_ bytes: [UInt8]) -> sockaddr {
        var inet = sockaddr_in()
        inet.sin_family = sa_family_t(AF_INET)
        withUnsafeMutableBytes(of: &inet.sin_addr) { for index in 0..<4 { $0[index] = bytes[index] } }
        var result = sockaddr()
        withUnsafeMutableBytes(of: &result) { target in
            withUnsafeBytes(of: &inet) { source in target.copyMemory(from: UnsafeRawBufferPointer(rebasing: source.prefix(target.count))) }
        }
        return result
    }

    private static func bytes(of address: sockaddr) -> [UInt8] {
        var address = address
        return withUnsafeBytes(of: &address) { raw in
            raw.withMemoryRebound(to: UInt8.self) { Array($0[4..<8]) }
        }
    }
}
