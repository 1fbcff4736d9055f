-- Argo CD health for agenttoken.dev/AgentToken, from its kstatus conditions.
local hs = {}
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Renewal is suspended; the current token stays until it expires"
  return hs
end
if obj.status ~= nil and obj.status.usage ~= nil
    and (obj.status.usage.state == "Suspended" or obj.status.usage.state == "Revoked") then
  -- spec.unused: suspended (and then revoked) because no workload consumed the Secret
  hs.status = "Suspended"
  hs.message = "Unused since " .. (obj.status.usage.unusedSince or "?") .. ": renewal " ..
    (obj.status.usage.state == "Revoked" and "suspended and the token revoked" or "suspended")
  return hs
end
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local ready = nil
local reconciling = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Stalled" and condition.status == "True" then
    hs.status = "Degraded"
    hs.message = (condition.reason or "Stalled") .. ": " .. (condition.message or "")
    return hs
  end
  if condition.type == "Ready" then ready = condition end
  if condition.type == "Reconciling" and condition.status == "True" then reconciling = condition end
end
if ready ~= nil and ready.status == "False" and (ready.reason == "TokenExpired" or ready.reason == "IssueFailed") then
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. (ready.message or "")
  return hs
end
if reconciling ~= nil then
  hs.status = "Progressing"
  hs.message = (reconciling.reason or "Reconciling") .. ": " .. (reconciling.message or "")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Token ready"
  return hs
end
hs.status = "Progressing"
hs.message = (ready and ready.message) or "Waiting for a token"
return hs
