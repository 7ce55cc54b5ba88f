import ModelessDevice
import ModelessSystem

/// The checks a controller's start makes before it resumes a predecessor's queues instead of
/// resetting the controller (docs/kernel-interfaces.md, "Resuming the controller"): the saved
/// state is whole and was written for the same controller and the same choices, the device
/// still masters the bus, and the controller is still enabled and running those queues.
extension NVMeController {
    /// How long a resumption waits for the commands a predecessor left in flight before it
    /// gives up and resets the controller.
    static let drainPatience: Duration = .seconds(2)

    /// The saved header and Identify data in `memory` when the controller may be resumed from
    /// them; otherwise why not. Reads registers; writes nothing.
    static func resumable(_ memory: NVMeQueueMemory, registers: MMIORegion, command: ConfigSpaceAccess.Command,
                          completion: Completion, vectorsOffered: Int) throws(DeviceError) -> Result<(NVMeKeptHeader, [UInt8]), NVMeKeptHeader.Refusal> {
        let loaded = try NVMeKeptHeader.load(from: memory.kept)
        guard case .success(let (header, _)) = loaded else { return loaded }
        func refuse(_ why: String) -> Result<(NVMeKeptHeader, [UInt8]), NVMeKeptHeader.Refusal> { .failure(NVMeKeptHeader.Refusal(why)) }
        guard header.layout == memory.layout, header.capabilities == memory.capabilities.rawValue else {
            return refuse("the saved state is of another queue layout or controller")
        }
        guard header.completion == completion, header.ioQueueLimit == memory.ioQueueLimit else {
            return refuse("the saved state is of a start with --irq \(header.completion.rawValue)"
                          + (header.ioQueueLimit.map { " and \($0) I/O queue(s) at most" } ?? "") + ", not this one's")
        }
        let vectors = completion == .poll ? 1 : completion == .msix ? min(memory.ioQueues.count, vectorsOffered) : 1
        guard header.vectorCount == vectors else {
            return refuse("the saved state is of \(header.vectorCount) interrupt vector(s), this start would enable \(vectors)")
        }
        guard command.contains(.busMaster) else { return refuse("bus mastering is off: the device stopped running the saved queues") }
        let status = NVMeStatusRegister(rawValue: registers.load(NVMeRegister.status))
        let configuration = NVMeConfiguration(rawValue: registers.load(NVMeRegister.configuration))
        guard !status.isAllOnes else { return refuse("CSTS reads all-ones") }
        guard configuration.contains(.enable), status.contains(.ready), !status.contains(.fatal) else {
            return refuse("the controller is not running (CC.EN \(configuration.contains(.enable) ? 1 : 0), CSTS.RDY \(status.contains(.ready) ? 1 : 0), "
                          + "CSTS.CFS \(status.contains(.fatal) ? 1 : 0))")
        }
        let attributes = NVMeAdminQueueAttributes(submissionEntries: memory.admin.entries, completionEntries: memory.admin.entries)
        guard registers.load(NVMeRegister.adminQueueAttributes) == attributes.rawValue,
              registers.load(NVMeRegister.adminSubmissionQueue) == memory.admin.submissions.deviceAddress,
              registers.load(NVMeRegister.adminCompletionQueue) == memory.admin.completions.deviceAddress else {
            return refuse("the controller's admin queue (AQA, ASQ, ACQ) is not the saved one")
        }
        return loaded
    }
}
