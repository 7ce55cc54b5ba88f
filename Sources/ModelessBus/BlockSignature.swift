import CLibBlkid
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// What libblkid finds at the start of a block device (or an image file): a partition table,
/// or the superblock of a file system, a RAID or LVM member, an encrypted volume, swap.
///
/// Binding a storage device to a user-mode driver hands its media to a program that may
/// overwrite it, so ``PCIBinder`` refuses a device whose block devices carry any of these
/// unless it is forced.
public struct BlockSignature: Sendable, Equatable, CustomStringConvertible {
    /// The partition table type (libblkid's `PTTYPE`: `gpt`, `dos`, …), if one was found.
    public var partitionTable: String?
    /// The partition table's identifier (`PTUUID`).
    public var partitionTableUUID: String?
    /// The superblock type (`TYPE`: `ext4`, `xfs`, `linux_raid_member`, `LVM2_member`, `swap`, …).
    public var type: String?
    /// What the superblock is for (`USAGE`: `filesystem`, `raid`, `crypto` or `other`).
    public var usage: String?
    /// The file system or member identifier (`UUID`).
    public var uuid: String?
    /// The file system label (`LABEL`).
    public var label: String?
    /// Whether libblkid found more than one superblock that could each be the one in use
    /// (`blkid_do_safeprobe` returned -2), so none is named.
    public var isAmbiguous: Bool

    /// A signature with the probe's values; every field is optional, as libblkid reports only what
    /// it found.
    public init(partitionTable: String? = nil, partitionTableUUID: String? = nil, type: String? = nil,
                usage: String? = nil, uuid: String? = nil, label: String? = nil, isAmbiguous: Bool = false) {
        self.partitionTable = partitionTable
        self.partitionTableUUID = partitionTableUUID
        self.type = type
        self.usage = usage
        self.uuid = uuid
        self.label = label
        self.isAmbiguous = isAmbiguous
    }

    /// `an ext4 filesystem (UUID 0b7e…, label data)`, `a gpt partition table (PTUUID 5f2c…)`.
    public var description: String {
        var parts: [String] = []
        if let partitionTable {
            parts.append(Self.withArticle("\(partitionTable) partition table")
                         + (partitionTableUUID.map { " (PTUUID \($0))" } ?? ""))
        }
        if let type {
            let noun = switch usage {
            case "filesystem": "filesystem"
            case "raid": "RAID/LVM member"
            case "crypto": "encrypted volume"
            default: "signature"
            }
            let details = [uuid.map { "UUID \($0)" }, label.map { "label \($0)" }].compactMap { $0 }
            parts.append(Self.withArticle("\(type) \(noun)") + (details.isEmpty ? "" : " (\(details.joined(separator: ", ")))"))
        }
        if isAmbiguous { parts.append("more than one file system or RAID signature (libblkid cannot tell which is in use)") }
        return parts.joined(separator: " and ")
    }

    private static func withArticle(_ noun: String) -> String {
        ("aeiouAEIOU".contains(noun.first ?? "x") ? "an " : "a ") + noun
    }

    /// Probes the block device or file at `path` for a partition table and a superblock, read-only.
    ///
    /// - Returns: the signature, or `nil` when libblkid finds none.
    /// - Throws: `SystemError` when the path cannot be opened or read.
    public static func probe(_ path: String) throws(SystemError) -> BlockSignature? {
        errno = 0
        guard let probe = blkid_new_probe_from_filename(path) else {
            throw SystemError("blkid_new_probe_from_filename", path, errno: errno == 0 ? .ioError : .current)
        }
        defer { blkid_free_probe(probe) }
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_set_superblocks_flags(probe, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_USAGE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_LABEL)
        blkid_probe_enable_partitions(probe, 1)
        errno = 0
        let result = blkid_do_safeprobe(probe)
        switch result {
        case 1:
            return nil
        case -2:
            var signature = read(probe)
            signature.isAmbiguous = true
            return signature
        case 0:
            let signature = read(probe)
            return signature == BlockSignature() ? nil : signature
        default:
            throw SystemError("blkid_do_safeprobe", path, errno: errno == 0 ? .ioError : .current)
        }
    }

    private static func read(_ probe: blkid_probe) -> BlockSignature {
        func value(_ name: String) -> String? {
            var data: UnsafePointer<CChar>?
            guard blkid_probe_lookup_value(probe, name, &data, nil) == 0, let data else { return nil }
            let text = String(cString: data)
            return text.isEmpty ? nil : text
        }
        return BlockSignature(partitionTable: value("PTTYPE"), partitionTableUUID: value("PTUUID"),
                              type: value("TYPE"), usage: value("USAGE"), uuid: value("UUID"), label: value("LABEL"))
    }
}
