//! Human approval for `action: ask` tool calls: the approver interface, a desktop approver
//! (zenity/kdialog), a headless approver, and the approval-fatigue limiter.
