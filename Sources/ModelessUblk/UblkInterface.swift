import CLibURing

/// The numbers of the kernel's ublk interface (Linux 6.12's include/uapi/linux/ublk_cmd.h),
/// with Swift names.
public enum UblkInterface {
    /// The control device, present once the `ublk_drv` module is loaded.
    public static let controlPath = "/dev/ublk-control"
    /// The character device of ublk device `id`, through which its server fetches requests.
    public static func characterDevicePath(_ id: UInt32) -> String { "/dev/ublkc\(id)" }
    /// The block device the kernel's users see.
    public static func blockDevicePath(_ id: UInt32) -> String { "/dev/ublkb\(id)" }

    /// The most requests one queue may have in flight (UBLK_MAX_QUEUE_DEPTH).
    public static let maximumQueueDepth = 4096
    /// Ask the kernel to choose the device number (a `dev_id` of -1).
    static let anyDevice = UInt32.max
    /// `queue_id` of a command that is not for one queue.
    static let noQueue = UInt16.max
    /// Bytes of one request descriptor (`struct ublksrv_io_desc`).
    static let descriptorSize = MemoryLayout<ublksrv_io_desc>.size
    /// Where queue `q`'s descriptors are mapped on the character device: each queue's window
    /// is the size of the largest queue's, rounded up to whole pages.
    static func descriptorOffset(queue: Int, pageSize: Int) -> Int64 {
        let window = (maximumQueueDepth * descriptorSize + pageSize - 1) / pageSize * pageSize
        return Int64(queue * window)
    }
    /// The result that ends a fetch for good: the queue is going away (UBLK_IO_RES_ABORT, -ENODEV).
    static let abortResult: Int32 = -19
}

/// Control commands on `/dev/ublk-control`, ioctl-encoded (UBLK_U_CMD_*).
enum UblkControlCommand: UInt32 {
    case getDeviceInfo = 0x02
    case addDevice = 0x04
    case deleteDevice = 0x05
    case startDevice = 0x06
    case stopDevice = 0x07
    case setParameters = 0x08
    case getParameters = 0x09
    case startUserRecovery = 0x10
    case endUserRecovery = 0x11
    case getFeatures = 0x13

    /// The command number the kernel expects with UBLK_F_CMD_IOCTL_ENCODE.
    var encoded: UInt32 {
        switch self {
        case .getDeviceInfo, .getParameters, .getFeatures: modeless_ublk_control_read(rawValue)
        default: modeless_ublk_control_read_write(rawValue)
        }
    }

    /// The name the kernel's header gives it, for messages.
    var name: String {
        switch self {
        case .getDeviceInfo: "UBLK_U_CMD_GET_DEV_INFO"
        case .addDevice: "UBLK_U_CMD_ADD_DEV"
        case .deleteDevice: "UBLK_U_CMD_DEL_DEV"
        case .startDevice: "UBLK_U_CMD_START_DEV"
        case .stopDevice: "UBLK_U_CMD_STOP_DEV"
        case .setParameters: "UBLK_U_CMD_SET_PARAMS"
        case .getParameters: "UBLK_U_CMD_GET_PARAMS"
        case .getFeatures: "UBLK_U_CMD_GET_FEATURES"
        case .startUserRecovery: "UBLK_U_CMD_START_USER_RECOVERY"
        case .endUserRecovery: "UBLK_U_CMD_END_USER_RECOVERY"
        }
    }
}

/// A device's state as GET_DEV_INFO reports it (UBLK_S_DEV_*).
public enum UblkDeviceState: UInt16, Sendable {
    /// Added (or stopped): no block device.
    case dead = 0
    /// Started: `/dev/ublkbN` is served.
    case live = 1
    /// Its server died and the device has user recovery: requests wait for a new server.
    case quiesced = 2
    /// Its server died and the device fails I/O until recovered (UBLK_F_USER_RECOVERY_FAIL_IO).
    case failingIO = 3
}

/// I/O commands on `/dev/ublkcN`, ioctl-encoded (UBLK_U_IO_*).
enum UblkIOCommand: UInt32 {
    /// Hand the kernel a tag's buffer and wait for its first request.
    case fetch = 0x20
    /// Report a tag's result and wait for its next request, in one command.
    case commitAndFetch = 0x21

    var encoded: UInt32 { modeless_ublk_io_command(rawValue) }
}

/// Feature flags of a ublk device (UBLK_F_*): asked for at ADD_DEV, and reported by
/// GET_FEATURES as what the running kernel supports.
public struct UblkFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    /// The UBLK_F_* bits, as ADD_DEV and GET_FEATURES carry them.
    public let rawValue: UInt64
    /// Flags from their UBLK_F_* bits; unknown bits are kept.
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// UBLK_F_SUPPORT_ZERO_COPY.
    public static let zeroCopy = UblkFeatures(rawValue: 1 << 0)
    /// UBLK_F_URING_CMD_COMP_IN_TASK: completions run in the server's task.
    public static let completeInTask = UblkFeatures(rawValue: 1 << 1)
    /// UBLK_F_NEED_GET_DATA.
    public static let needGetData = UblkFeatures(rawValue: 1 << 2)
    /// UBLK_F_USER_RECOVERY: the device outlives its server; a new one may take it over.
    public static let userRecovery = UblkFeatures(rawValue: 1 << 3)
    /// UBLK_F_USER_RECOVERY_REISSUE: with recovery, requests in flight are sent again.
    public static let userRecoveryReissue = UblkFeatures(rawValue: 1 << 4)
    /// UBLK_F_UNPRIVILEGED_DEV.
    public static let unprivileged = UblkFeatures(rawValue: 1 << 5)
    /// UBLK_F_CMD_IOCTL_ENCODE: commands numbered as ioctls (the form 6.x kernels expect).
    public static let ioctlEncode = UblkFeatures(rawValue: 1 << 6)
    /// UBLK_F_USER_COPY.
    public static let userCopy = UblkFeatures(rawValue: 1 << 7)
    /// UBLK_F_ZONED.
    public static let zoned = UblkFeatures(rawValue: 1 << 8)

    /// The flags' names joined by commas (`user-recovery, ioctl-encode`), unknown bits in hex.
    public var description: String {
        let names: [(UblkFeatures, String)] = [
            (.zeroCopy, "zero-copy"), (.completeInTask, "complete-in-task"), (.needGetData, "need-get-data"),
            (.userRecovery, "user-recovery"), (.userRecoveryReissue, "user-recovery-reissue"),
            (.unprivileged, "unprivileged"), (.ioctlEncode, "ioctl-encode"), (.userCopy, "user-copy"), (.zoned, "zoned"),
        ]
        let known = names.filter { contains($0.0) }.map(\.1)
        let rest = subtracting(UblkFeatures(names.map(\.0)))
        return (known + (rest.isEmpty ? [] : ["0x" + String(rest.rawValue, radix: 16)])).joined(separator: ", ")
    }
}

/// What a request asks for (UBLK_IO_OP_*, the low byte of a descriptor's `op_flags`).
public enum UblkOperation: UInt8, Sendable {
    case read = 0
    case write = 1
    case flush = 2
    case discard = 3
    case writeSame = 4
    case writeZeroes = 5
}

/// Device attributes in the basic parameters (UBLK_ATTR_*).
struct UblkAttributes: OptionSet {
    let rawValue: UInt32
    static let readOnly = UblkAttributes(rawValue: 1 << 0)
    static let rotational = UblkAttributes(rawValue: 1 << 1)
    /// The device has a write cache: the kernel sends flushes.
    static let volatileCache = UblkAttributes(rawValue: 1 << 2)
    static let forceUnitAccess = UblkAttributes(rawValue: 1 << 3)
}

/// Which parameter groups SET_PARAMS carries (UBLK_PARAM_TYPE_*).
struct UblkParameterTypes: OptionSet {
    let rawValue: UInt32
    static let basic = UblkParameterTypes(rawValue: 1 << 0)
    static let discard = UblkParameterTypes(rawValue: 1 << 1)
}
